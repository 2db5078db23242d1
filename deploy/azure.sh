#!/usr/bin/env bash
# The Azure resources of the seed's system, with the `az` CLI: a storage account for uploads and outputs,
# a Service Bus queue, and an Event Grid subscription that sends the account's Blob Created events for the
# `uploads` container (committed blobs only) to that queue. Prints the VEIL_* settings to give every
# Veil process. Idempotent enough to re-run; review before running (it creates billable resources).
#
#   RG=veil LOCATION=westeurope STORAGE=veilstore123 SERVICEBUS=veil-bus-123 bash deploy/azure.sh
set -euo pipefail
: "${RG:?set RG (resource group)}" "${STORAGE:?set STORAGE (storage account name, 3-24 lowercase)}"
: "${SERVICEBUS:?set SERVICEBUS (Service Bus namespace name)}"
LOCATION="${LOCATION:-westeurope}"
QUEUE="${QUEUE:-veil-uploads}"

az provider register --namespace Microsoft.EventGrid --wait
az group create --name "$RG" --location "$LOCATION" --output none

# Only StorageV2 / BlockBlobStorage / BlobStorage accounts emit Blob Created events (notes §3).
az storage account create --name "$STORAGE" --resource-group "$RG" --location "$LOCATION" \
  --kind StorageV2 --sku Standard_LRS --min-tls-version TLS1_2 --allow-blob-public-access false --output none
STORAGE_ID=$(az storage account show --name "$STORAGE" --resource-group "$RG" --query id --output tsv)
STORAGE_CONNECTION=$(az storage account show-connection-string --name "$STORAGE" --resource-group "$RG" \
  --query connectionString --output tsv)
for container in uploads outputs; do
  az storage container create --name "$container" --connection-string "$STORAGE_CONNECTION" --output none
done

# Standard tier for duplicate detection; sessions off (session queues cannot be Event Grid handlers).
az servicebus namespace create --name "$SERVICEBUS" --resource-group "$RG" --location "$LOCATION" \
  --sku Standard --output none
az servicebus queue create --name "$QUEUE" --namespace-name "$SERVICEBUS" --resource-group "$RG" \
  --lock-duration PT1M --max-delivery-count 10 --enable-dead-lettering-on-message-expiration true \
  --enable-duplicate-detection true --duplicate-detection-history-time-window PT10M --output none
QUEUE_ID=$(az servicebus queue show --name "$QUEUE" --namespace-name "$SERVICEBUS" --resource-group "$RG" \
  --query id --output tsv)

# Blob Created for committed blobs in `uploads` only (Put Block alone emits nothing; CreateFile on HNS
# accounts fires for an empty file first, so it is filtered out).
az eventgrid event-subscription create --name veil-uploads --source-resource-id "$STORAGE_ID" \
  --endpoint-type servicebusqueue --endpoint "$QUEUE_ID" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with /blobServices/default/containers/uploads/blobs/ \
  --advanced-filter data.api StringIn PutBlob PutBlockList CopyBlob FlushWithClose \
  --max-delivery-attempts 30 --event-ttl 1440 --output none
# Alternative without Service Bus: the webhook (both validation handshakes are answered by Veil):
#   --endpoint-type webhook --endpoint "https://<api host>/events/blob-created?secret=<VEIL_EVENTS_SECRET>"

# Veil only listens on the queue.
az servicebus queue authorization-rule create --name veil-listen --queue-name "$QUEUE" \
  --namespace-name "$SERVICEBUS" --resource-group "$RG" --rights Listen --output none
SERVICEBUS_CONNECTION=$(az servicebus queue authorization-rule keys list --name veil-listen --queue-name "$QUEUE" \
  --namespace-name "$SERVICEBUS" --resource-group "$RG" --query primaryConnectionString --output tsv)

cat <<SETTINGS
# Give these to every Veil process (API servers, workers, veil events):
VEIL_STORAGE_BACKEND=azure
VEIL_AZURE_CONNECTION_STRING='$STORAGE_CONNECTION'
VEIL_SERVICEBUS_CONNECTION_STRING='$SERVICEBUS_CONNECTION'
VEIL_SERVICEBUS_QUEUE=$QUEUE
VEIL_UPLOAD_POLL_SECONDS=30   # events arrive within seconds; polling stays as a slow safety net
SETTINGS
