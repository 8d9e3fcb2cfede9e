// Opens ComfyUI_IPAdapter_plus workflows with this extension's nodes.
//
// When a graph that is being loaded uses node types of that extension and the extension is not
// installed, the graph is converted before the editor builds it (the frontend's beforeConfigureGraph
// hook runs before it looks for missing node types), by the Python converter behind this extension's
// route, and one notice says what was converted and what was not. When that extension is installed,
// nothing changes on load; the command "Convert ComfyUI_IPAdapter_plus nodes" (menu Extensions ›
// IP-Adapter, or the command palette) converts the open graph on request. API-format files get the same
// treatment through a wrapper around app.loadApiJson.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const ROUTE = "/ipadapter/convert";
const COMMAND = "IPAdapter.ConvertPlusWorkflow";
const NOTICE_LIFE_MS = 20000;
// Longer than the route's own limit (20 s, ip_adapter_core/convert/limits.py TIME_LIMIT_S) plus the upload
// of its largest body, so the server's answer, with its reason, normally comes first.
const REQUEST_TIMEOUT_MS = 30000;
let theirTypes = null;

async function loadTheirTypes() {
  if (theirTypes === null) {
    try {
      const res = await api.fetchApi(`${ROUTE}/types`);
      theirTypes = new Set(res.ok ? (await res.json()).types : []);
    } catch (err) {
      console.warn("IP-Adapter: could not read the convertible node types", err);
      theirTypes = new Set();
    }
  }
  return theirTypes;
}

function theirNodes(graphData, types) {
  return (graphData?.nodes ?? []).filter((n) => types.has(n.type));
}

function theirsInstalled(nodes) {
  const registered = window.LiteGraph?.registered_node_types ?? {};
  return nodes.some((n) => n.type in registered);
}

// The error of a refused request: the server's reason, and whether the server refused the file (HTTP 4xx:
// it will refuse it again) or could not answer in time.
class Refusal extends Error {
  constructor(message, refused) {
    super(message);
    this.refused = refused;
  }
}

async function requestConversion(workflow) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  try {
    const res = await api.fetchApi(ROUTE, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ workflow }),
      signal: abort.signal,
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      throw new Refusal(`the server refused the file (HTTP ${res.status}): ${body.error ?? res.statusText}`,
        res.status >= 400 && res.status < 500);
    }
    return body;
  } catch (err) {
    if (err?.name === "AbortError") {
      throw new Refusal(`the server did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`, false);
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function describe(report) {
  const lines = [report.summary];
  const kept = report.kept ?? [];
  for (const k of kept.slice(0, 6)) lines.push(`#${k.id} ${k.type}: ${k.reason}.`);
  if (kept.length > 6) lines.push(`… and ${kept.length - 6} more.`);
  const lost = (report.converted ?? []).flatMap((c) => c.lost.map((l) => `#${c.id} ${c.type}: ${l}`));
  for (const l of lost.slice(0, 4)) lines.push(`Not kept: ${l}.`);
  if (report.converted?.length) {
    lines.push("Differences in output: the middle block is patched here; plus/full-face default "
      + "negatives follow the reference. Details: docs/converting.md in this extension's folder.");
  }
  return lines.join("\n");
}

function notify(report) {
  const complete = report.complete;
  const summary = complete ? "IP-Adapter: workflow converted" : "IP-Adapter: workflow converted in part";
  const toast = app.extensionManager?.toast;
  const detail = describe(report);
  if (toast) toast.add({ severity: complete ? "info" : "warn", summary, detail, life: NOTICE_LIFE_MS });
  console.info(`${summary}\n${detail}`);
}

function fail(err) {
  const detail = `The ComfyUI_IPAdapter_plus nodes were left as they are: ${err.message ?? err}`;
  const summary = err?.refused ? "IP-Adapter: file refused by the converter" : "IP-Adapter: conversion failed";
  app.extensionManager?.toast?.add({ severity: "error", summary, detail, life: NOTICE_LIFE_MS });
  console.error("IP-Adapter: conversion failed", err);
}

// Replace the graph data in place: the frontend goes on with the same object.
function replaceContents(target, source) {
  for (const key of Object.keys(target)) delete target[key];
  Object.assign(target, source);
}

// API-format files (prompts) go through app.loadApiJson, which has no hook and refuses a file with unknown
// node types outright; wrap it so that their prompts are converted first, with the same notice.
function wrapApiLoader() {
  const original = typeof app.loadApiJson === "function" ? app.loadApiJson.bind(app) : null;
  if (!original || original.ipadapterWrapped) return;
  const wrapped = async (apiData, fileName) => {
    const types = await loadTheirTypes();
    const registered = window.LiteGraph?.registered_node_types ?? {};
    const nodes = Object.values(apiData ?? {}).filter((n) => types.has(n?.class_type));
    if (nodes.length && !nodes.some((n) => n.class_type in registered)) {
      try {
        const { workflow, report } = await requestConversion(apiData);
        apiData = workflow;
        notify(report);
      } catch (err) {
        fail(err);
      }
    }
    return original(apiData, fileName);
  };
  wrapped.ipadapterWrapped = true;
  app.loadApiJson = wrapped;
}

app.registerExtension({
  name: "ipadapter.convert",
  commands: [
    {
      id: COMMAND,
      label: "Convert ComfyUI_IPAdapter_plus nodes to IP-Adapter nodes",
      function: async () => {
        const types = await loadTheirTypes();
        const graphData = app.graph.serialize();
        if (!theirNodes(graphData, types).length) {
          app.extensionManager?.toast?.add({ severity: "info", summary: "IP-Adapter",
            detail: "This graph has no ComfyUI_IPAdapter_plus nodes.", life: 5000 });
          return;
        }
        try {
          const { workflow, report } = await requestConversion(graphData);
          await app.loadGraphData(workflow, true, true, null);
          notify(report);
        } catch (err) {
          fail(err);
        }
      },
    },
  ],
  menuCommands: [{ path: ["Extensions", "IP-Adapter"], commands: [COMMAND] }],
  async setup() {
    wrapApiLoader();
    await loadTheirTypes();
  },
  async beforeConfigureGraph(graphData) {
    const types = await loadTheirTypes();
    const nodes = theirNodes(graphData, types);
    if (!nodes.length || theirsInstalled(nodes)) return;
    try {
      const { workflow, report } = await requestConversion(graphData);
      if (!report.converted.length && !report.kept.length) return;
      replaceContents(graphData, workflow);
      notify(report);
    } catch (err) {
      fail(err);
    }
  },
});
