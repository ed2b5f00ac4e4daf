"""The side port's page: every camera's snapshot and live line counts, refreshed by a
little inline script (no external resources: the page works on an isolated network)."""

from __future__ import annotations

__all__ = ["PAGE", "REFRESH_SECONDS"]

REFRESH_SECONDS = 3

PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ITS Camera AI: cameras</title>
<style>
body { font-family: sans-serif; background: #202124; color: #e8eaed; margin: 16px; }
.cameras { display: flex; flex-wrap: wrap; gap: 16px; }
.camera { background: #303134; padding: 8px; border-radius: 6px; }
.camera img { display: block; max-width: 600px; }
table { border-collapse: collapse; margin-top: 6px; }
td, th { padding: 2px 8px; text-align: left; }
#status { color: #f28b82; }
</style></head>
<body><h1>Cameras</h1><p id="status"></p><div class="cameras" id="cameras"></div>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
const shown = new Map();

async function fetchOk(url) {
  const response = await fetch(url, {headers, cache: "no-store"});
  if (!response.ok) { throw new Error(url + ": HTTP " + response.status); }
  return response;
}

function cameraBox(id) {
  let box = shown.get(id);
  if (box) { return box; }
  const root = document.createElement("div");
  root.className = "camera";
  const title = document.createElement("h2");
  const image = document.createElement("img");
  image.alt = "snapshot of camera " + id;
  const table = document.createElement("table");
  root.append(title, image, table);
  document.getElementById("cameras").append(root);
  box = {root, title, image, table};
  shown.set(id, box);
  return box;
}

function showCounts(table, lines) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const name of ["line", "direction", "vehicles"]) {
    const cell = document.createElement("th"); cell.textContent = name; head.append(cell);
  }
  for (const [line, byDirection] of Object.entries(lines)) {
    for (const [direction, vehicles] of Object.entries(byDirection)) {
      const row = table.insertRow();
      for (const text of [line, direction.replaceAll("_", " "), String(vehicles)]) {
        row.insertCell().textContent = text;
      }
    }
  }
}

async function refresh() {
  try {
    const listing = await (await fetchOk("/cameras.json")).json();
    await Promise.all(listing.cameras.map(async (camera) => {
      const box = cameraBox(camera.camera);
      box.title.textContent = camera.camera + " (" + camera.state + ")";
      showCounts(box.table, camera.lines);
      const url = "/cameras/" + encodeURIComponent(camera.camera) + "/snapshot.jpg";
      const blob = await (await fetchOk(url)).blob();
      const old = box.image.src;
      box.image.src = URL.createObjectURL(blob);
      if (old) { URL.revokeObjectURL(old); }
    }));
    document.getElementById("status").textContent = "";
  } catch (error) {
    document.getElementById("status").textContent = String(error);
  }
}

refresh();
setInterval(refresh, """
    + str(REFRESH_SECONDS * 1000)
    + """);
</script></body></html>
"""
).encode()
