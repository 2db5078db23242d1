// Usage charts (Chart.js, vendored in this folder).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("usage-data").textContent);
  var labels = data.days.map(function (d) { return d.slice(5); });
  var grid = { color: "#eef0f3" };
  var common = {
    responsive: true, maintainAspectRatio: false, animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { labels: { boxWidth: 12, font: { size: 12 } } } },
    scales: { x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } }, y: { beginAtZero: true, grid: grid, ticks: { precision: 0 } } }
  };
  new Chart(document.getElementById("chart-credits"), {
    type: "bar",
    data: { labels: labels, datasets: [{ label: "Credits spent", data: data.credits, backgroundColor: "#6366f1", borderRadius: 4, maxBarThickness: 28 }] },
    options: common
  });
  new Chart(document.getElementById("chart-files"), {
    type: "bar",
    data: { labels: labels, datasets: [
      { label: "Files", data: data.files, backgroundColor: "#12b76a", borderRadius: 4, maxBarThickness: 28, yAxisID: "y" },
      { label: "Video minutes", data: data.minutes, type: "line", borderColor: "#f79009", backgroundColor: "#f79009", tension: .3, pointRadius: 2, yAxisID: "y1" }
    ] },
    options: Object.assign({}, common, { scales: Object.assign({}, common.scales, {
      y1: { beginAtZero: true, position: "right", grid: { display: false } } }) })
  });
})();
