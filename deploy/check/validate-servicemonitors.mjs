// Validates ServiceMonitor objects (a JSON array on stdin) against prometheus-operator's schema as
// packaged in @kubernetes-models/prometheus-operator: types, required fields and enums. That schema
// allows unknown fields, so unknown keys of the spec, its endpoints and its selectors are refused
// here against the fields the package declares (its .d.ts), as strict validation would.
// Usage: node validate-servicemonitors.mjs NODE_MODULES_DIR < monitors.json
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const v1 = `${modules}/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1`;
// The package exports ES modules only; load the model's file from the given node_modules folder.
const { ServiceMonitor } = await import(pathToFileURL(`${v1}/ServiceMonitor.js`).href);

/** Field names of `export declare class NAME` in NAME.d.ts. */
function declaredFields(name) {
  const text = readFileSync(`${v1}/${name}.d.ts`, "utf8");
  const body = text.split(`export declare class ${name} `)[1].split("\n}")[0];
  return new Set([...body.matchAll(/^\s+"([^"]+)"\??:/gm)].map((m) => m[1]));
}

const labelSelector = new Set(["matchLabels", "matchExpressions"]);
function unknownKeys(monitor) {
  const found = [];
  const check = (obj, allowed, path) => {
    for (const key of Object.keys(obj ?? {})) if (!allowed.has(key)) found.push(`${path}.${key}`);
  };
  const spec = monitor.spec ?? {};
  check(monitor, new Set(["apiVersion", "kind", "metadata", "spec"]), "");
  check(spec, declaredFields("ServiceMonitorSpec"), ".spec");
  check(spec.selector, labelSelector, ".spec.selector");
  check(spec.namespaceSelector, declaredFields("NamespaceSelector"), ".spec.namespaceSelector");
  const endpoint = declaredFields("Endpoint");
  (spec.endpoints ?? []).forEach((e, i) => check(e, endpoint, `.spec.endpoints[${i}]`));
  return found;
}

const monitors = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const raw of monitors) {
  const name = `ServiceMonitor/${raw?.metadata?.name}`;
  try {
    new ServiceMonitor(raw).validate();
    const unknown = unknownKeys(raw);
    if (unknown.length) throw new Error(`unknown fields ${unknown.join(", ")}`);
    console.log(`ok ${name} (prometheus-operator schema)`);
  } catch (err) {
    failed += 1;
    console.error(`INVALID ${name}: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);
