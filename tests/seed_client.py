"""The seed document's "Cloud Public API Sample Client in Python", transcribed faithfully.

Source: ../shared/seed/000_480cf7d76f7a9bcd.txt. Nothing is changed but what a user changes:
`API_URL`, the key (passed in by the caller, as in the sample) and, to keep tests fast, the 3 s
sleep of the approve and polling loops, which is the module variable `SLEEP_SECONDS`.
Not a test module itself: `tests/test_e2e_seed_client.py` drives it against `veil serve`.
"""

import base64
import os
import time

import requests

API_URL = "https://api.syntonym.com/v1"
SLEEP_SECONDS = 3


def get_upload_url(api_key: str, file_name: str, model_config: dict):
    if not os.path.exists(file_name):
        raise FileNotFoundError(f"File {file_name} not found")
    if not len(api_key) == 36:
        raise ValueError("Invalid API key")
    file_size = os.path.getsize(file_name)

    url = f"{API_URL}/create_upload_session"
    headers = {
        "access_token": api_key
    }
    payload = {
        "file_name": file_name,
        "file_size": file_size,
        "content_type": "octet-stream",
        "model": "blur",
        "model_config": model_config
    }
    response = requests.post(url, headers=headers, json=payload)
    if response.status_code == 200:
        response_json = response.json()
        session_uri = response_json["session_uri"]
        job_uuid = response_json["job_id"]
        return session_uri, job_uuid
    else:
        raise Exception(f"Failed to get upload URL: {response.text}")


def upload_file(session_uri: str, file_name: str):
    chunk_size = 4 * 1024 * 1024  # 4 MB
    block_ids = []
    with open(file_name, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            block_id = base64.urlsafe_b64encode(len(block_ids).to_bytes(4, byteorder="big")).decode("utf-8")
            if not chunk:
                break
            response = requests.put(session_uri + "&comp=block" + "&blockid=" + block_id, data=chunk)
            if response.status_code != 201:
                raise Exception(f"Failed to upload file: {response.text}")
            else:
                block_ids.append(block_id)

    xml = "<BlockList>"

    # Iterate over the block_ids
    for i, block_id in enumerate(block_ids):
        xml += f"<Latest>{block_id}</Latest>"

    # Add the closing BlockList tag
    xml += "</BlockList>"
    # commit the blocks
    response = requests.put(session_uri + "&comp=blocklist", data=xml)
    if response.status_code != 201:
        raise Exception(f"Failed to upload file: {response.text}")


def approve_job(api_key: str, job_id: str) -> bool:
    url = f"{API_URL}/approve_job/{job_id}"
    headers = {
        "access_token": api_key
    }
    while True:
        response = requests.post(url, headers=headers)
        if response.status_code == 200:
            print("Job approved")
            return True
        elif response.status_code == 202:
            print("Job already approved")
            return True
        elif response.status_code == 302:
            print("Backend is waiting for upload completion")
            time.sleep(SLEEP_SECONDS)
        else:
            print(f"approve response: {response.text}")
            time.sleep(SLEEP_SECONDS)


def wait_for_job_to_complete(job_id: str, api_key: str):
    url = f"{API_URL}/job_result/{job_id}"
    headers = {
        "access_token": api_key
    }
    while True:
        response = requests.get(url, headers=headers)
        if response.status_code == 200:
            response_json = response.json()
            if 0 < response_json["job_status"] < 100:
                print(f"Job progress: %{response_json['job_status']}")
                time.sleep(SLEEP_SECONDS)
            elif response_json["job_status"] == 100:
                print("Job completed")
                tasks = response_json["tasks"]
                return tasks
            elif response_json["job_status"] == 200:
                print(f"Job failed:{response_json['job_status_description']}")
                return response_json
            else:
                print("Job waiting in queue")
                time.sleep(SLEEP_SECONDS)
        else:
            print(f"Job result response: {response.text}")
            return False


def download_tasks(tasks: dict):
    chunk_size = 1024 * 1024  # 1 MB
    for task in tasks:
        url = task["download_link"]
        file_name = task["output_file"]
        if url is not None and url != "":
            with requests.get(url, stream=True) as r:
                r.raise_for_status()
                with open(file_name, "wb") as f:
                    for chunk in r.iter_content(chunk_size=chunk_size):
                        f.write(chunk)
            print(f"Downloaded {file_name}")


def process_file(file_name: str, api_key: str, model_config: dict):
    # get a signed url to upload the file and associated job id
    upload_url, new_job_id = get_upload_url(api_key=api_key, file_name=file_name, model_config=model_config)

    # upload the file to the signed url (Azure Blob Storage)
    upload_file(session_uri=upload_url, file_name=file_name)

    # approve the job to start processing the uploaded file
    if not approve_job(api_key=api_key, job_id=new_job_id):
        print("Failed to approve job")
        return

    # wait for the job to complete and get links for the processed files
    tasks = wait_for_job_to_complete(job_id=new_job_id, api_key=api_key)

    # download the processed files
    download_tasks(tasks)


if __name__ == "__main__":

    API_URL = os.environ.get("VEIL_API_URL", "http://127.0.0.1:8000/v1")

    # 1.Replace with your Syntonym API key
    syntonym_api_key = os.environ.get("VEIL_API_KEY", "your_api_key_here")

    # 2.Replace with the file name to process
    file = "test_image"
    # file = "test_video.mp4"

    # 3.Set desired model configuration
    config = {
        "blur_face": True,  # enable face anonymization default=True
        "blur_threshold": 0.5,  # 0<=threshold<=1 default=0.5
        "lp_threshold": 0.5,  # 0<=threshold<=1 default=0.5
        "enable_lp": True,  # enable license plate anonymization default=False
        "mask_blur": True,  # attempt mask blur instead of circle blur default=True
        "slicing": True,  # enable for high resolution images/videos default=False
        "lp_track": True,  # enable license plate tracking default=False
    }

    process_file(file_name=file, api_key=syntonym_api_key, model_config=config)
