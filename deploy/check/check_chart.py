"""Offline checks of the Helm chart (make deploy-check; scripts/deploy-check sets up the tools).

For each scenario (each values file, and the TLS / API-key / autoscaler / ServiceMonitor / Job
options turned on): `helm lint --strict`, `helm template`, every rendered manifest validated against
the Kubernetes schemas in strict mode (kubernetes-validate), ServiceMonitors against
prometheus-operator's schema (validate-servicemonitors.mjs), then what the chart promises: non-root,
read-only root and model, the probes on the health port, the Services, the grace period, no secret
in the manifests. Settings that cannot work must fail to render, with a message that says why.

Usage: python check_chart.py HELM NODE_MODULES_DIR
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/rotations"
# The Kubernetes release the static kubectl/helm of the tools package targets.
KUBERNETES_VERSION = "1.34.0"
NAMESPACE = "research"
RELEASE = "rot"
FULL = f"{RELEASE}-rotations"

# Names the chart relies on, checked against the server's sources so that they cannot drift apart.
READINESS_SERVICE = "rotations.v1.RotationService"
LIVENESS_SERVICE = "liveness"
QUEUE_METRIC = "rotations_queue_depth"

SECURE = [
    "tls.enabled=true",
    "tls.existingSecret=rotations-tls",
    "tls.clientCA.existingSecret=rotations-client-ca",
    "auth.existingSecret=rotations-api-keys",
]
JOB = [
    "job.enabled=true",
    "job.completions=4",
    "job.parallelism=2",
    "job.corpus.claimName=corpus",
    "job.results.claimName=results",
]
SCENARIOS = {
    "defaults": ([], []),
    "cpu": (["values-cpu.yaml"], []),
    "gpu": (["values-gpu.yaml"], []),
    "gpu, TLS + mTLS + keys file, HPA, ServiceMonitor, Job": (
        ["values-gpu.yaml"],
        SECURE
        + JOB
        + [
            "autoscaling.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
            "job.apiKey.existingSecret=rotations-client-key",
            "job.caCert.existingSecret=rotations-ca",
            "tracing.otlpEndpoint=http://otel-collector.observability:4317",
            "tracing.resourceAttributes.deployment\\.environment=prod",
        ],
    ),
    "cpu, model from an image, one key from env, Job, fixed threads and grace": (
        ["values-cpu.yaml"],
        JOB
        + [
            "model.source=image",
            "model.image.repository=registry.example/gpt2-xl-model",
            "auth.existingSecret=rotations-api-key",
            "auth.mode=env",
            "auth.secretKey=api-key",
            "server.threads=6",
            "terminationGracePeriodSeconds=120",
            "lifecycle.preStopSleepSeconds=0",
            "podDisruptionBudget.enabled=false",
        ],
    ),
}
# Settings that must not render, and the words the refusal must contain (the chart's own checks in
# templates/_helpers.tpl, then values.schema.json).
REFUSED = [
    (["terminationGracePeriodSeconds=30"], "must exceed lifecycle.preStopSleepSeconds"),
    (["tls.enabled=true"], "tls.enabled needs tls.existingSecret"),
    (["tls.clientCA.existingSecret=ca"], "needs tls.enabled"),
    (["model.source=pvc"], "needs model.pvc.claimName"),
    # values.schema.json: each value alone.
    (["model.source=s3"], "at '/model/source': value must be one of 'bundled', 'pvc', 'image'"),
    (["auth.existingSecret=k", "auth.mode=plain"], "at '/auth/mode': value must be one of"),
    (["replicaCont=3"], "additional properties 'replicaCont' not allowed"),
    (["server.port=70000"], "at '/server/port': maximum"),
    (["probes.startup.failureThreshold=0"], "at '/probes/startup/failureThreshold': minimum"),
    (["autoscaling.enabled=true", "metrics.enabled=false"], "needs metrics.enabled"),
    (["job.enabled=true"], "job.enabled needs"),
]


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


def helm(helm_bin, *args):
    return subprocess.run([helm_bin, *args], capture_output=True, text=True)


def helm_args(files, sets):
    args = []
    for f in files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set-string" if s.startswith("server.threads=") else "--set", s]
    return args


def render(helm_bin, files, sets):
    lint = helm(helm_bin, "lint", "--strict", str(CHART), *helm_args(files, sets))
    expect(lint.returncode == 0, f"helm lint failed:\n{lint.stdout}{lint.stderr}")
    out = helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *helm_args(files, sets))
    expect(out.returncode == 0, f"helm template failed:\n{out.stderr}")
    # `helm template` leaves NOTES.txt out; a client-side dry run prints it.
    notes = helm(helm_bin, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE,
                 *helm_args(files, sets))
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return out.stdout, docs, notes


def validate_schemas(docs, node_modules):
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise Failure(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}") from e
    if monitors:
        run = subprocess.run(["node", str(Path(__file__).with_name("validate-servicemonitors.mjs")), node_modules],
                             input=json.dumps(monitors), capture_output=True, text=True)
        expect(run.returncode == 0, f"ServiceMonitor: {run.stdout}{run.stderr}")
    return len(docs) - len(monitors), len(monitors)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    expect(len(found) == 1, f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_pod_hardening(pod, what):
    expect(pod["securityContext"].get("runAsNonRoot") is True, f"{what}: runAsNonRoot")
    expect(pod.get("automountServiceAccountToken") is False, f"{what}: service account token mounted")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        expect(sc.get("readOnlyRootFilesystem") is True, f"{what}/{c['name']}: root filesystem writable")
        expect(sc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}: privilege escalation")
        expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{what}/{c['name']}: capabilities kept")


def check_server(docs, values_env_expect):
    deploy = one(docs, "Deployment", FULL)
    pod = deploy["spec"]["template"]["spec"]
    check_pod_hardening(pod, "Deployment")
    server = next(c for c in pod["containers"] if c["name"] == "server")
    env = env_of(server)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    health_port = int(env["ROTATIONS_HEALTH_PORT"]["value"])
    expect(ports["health"] == health_port and ports["grpc"] == int(env["ROTATIONS_PORT"]["value"]), "ports vs env")
    expect(env["ROTATIONS_HOST"]["value"] == "0.0.0.0", "the server must listen on the pod's address")

    probes = {k: server[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        expect(probe["grpc"]["port"] == health_port, f"{name} is not on the health port")
    expect(probes["startupProbe"]["grpc"]["service"] == READINESS_SERVICE, "startup probe service")
    expect(probes["readinessProbe"]["grpc"]["service"] == READINESS_SERVICE, "readiness probe service")
    expect(probes["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE, "liveness probe service")
    window = probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"]
    expect(window >= 300, f"startup window {window}s is short for GPT-2 XL from network storage")

    grace = int(env["ROTATIONS_SHUTDOWN_GRACE_SECONDS"]["value"])
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    expect(pod["terminationGracePeriodSeconds"] > grace + pre_stop, "terminationGracePeriodSeconds too short")

    # The model: read-only wherever it is mounted, never fetched by the server.
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    model_dir = env["ROTATIONS_MODEL_DIR"]["value"]
    if "model" in mounts:
        expect(mounts["model"].get("readOnly") is True, "model volume mounted writable")
        expect(model_dir.startswith(mounts["model"]["mountPath"] + "/"), "model dir is not on the model volume")
        volume = next(v for v in pod["volumes"] if v["name"] == "model")
        if "persistentVolumeClaim" in volume:
            expect(volume["persistentVolumeClaim"].get("readOnly") is True, "model claim not read-only")
    # Secrets: only by reference (a file path, or secretKeyRef).
    for name, e in env.items():
        if name in ("ROTATIONS_API_KEY",):
            expect("secretKeyRef" in e.get("valueFrom", {}), f"{name} must come from a Secret")
    for name, want in values_env_expect.items():
        expect(name in env, f"{name} not set")
        if want is not None:
            expect(env[name].get("value") == want, f"{name}={env[name].get('value')!r}, want {want!r}")
    return deploy, server, env


def check_services(docs, tls):
    headless = one(docs, "Service", f"{FULL}-headless")["spec"]
    plain = one(docs, "Service", FULL)["spec"]
    expect(headless["clusterIP"] == "None", "headless Service needs clusterIP: None")
    expect(headless.get("publishNotReadyAddresses") is False, "headless Service must list ready pods only")
    for spec in (headless, plain):
        (port,) = spec["ports"]
        expect(port["name"] == "grpc", "gRPC port must be named grpc")
        expect(port.get("appProtocol") == (None if tls else "kubernetes.io/h2c"), f"appProtocol {port.get('appProtocol')}")


def check_no_secret_material(text):
    expect("BEGIN " not in text and "PRIVATE KEY" not in text, "PEM material in the manifests")
    for doc in yaml.safe_load_all(text):
        expect(not doc or doc["kind"] != "Secret", "the chart must not create Secrets: they are referenced")


def check_tracing(docs, env, sets):
    """tracing.otlpEndpoint set: the server (and the Job's client) export there, their spans named by
    the pod; unset: no OTEL_* variable at all (the binary's tracing stays off)."""
    endpoint = next((s.split("=", 1)[1] for s in sets if s.startswith("tracing.otlpEndpoint=")), None)
    if endpoint is None:
        expect(not any(k.startswith("OTEL_") for k in env), "OTEL_* set without tracing.otlpEndpoint")
        return
    expect(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")
    expect(env["OTEL_SERVICE_NAME"]["value"] == "rotations", "OTEL_SERVICE_NAME")
    attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    names = list(env)
    for want in ("k8s.pod.name=$(K8S_POD_NAME)", "deployment.environment=prod"):
        expect(want in attributes, f"OTEL_RESOURCE_ATTRIBUTES lacks {want}: {attributes}")
    # $(VAR) expands only from variables defined before it.
    expect(names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"), "K8S_POD_NAME after its use")
    for job in by_kind(docs, "Job"):
        client = env_of(job["spec"]["template"]["spec"]["containers"][0])
        expect(client["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint, "the Job's client does not export")
        expect(client["OTEL_SERVICE_NAME"]["value"] == "rotations-analyze", "the Job's service.name")


def check_scenario(name, docs, text, notes, sets):
    tls = "tls.enabled=true" in sets
    expected_env = {}
    if tls:
        expected_env |= {"ROTATIONS_TLS_CERT": "/etc/rotations/tls/tls.crt", "ROTATIONS_TLS_KEY": "/etc/rotations/tls/tls.key"}
    if any(s.startswith("tls.clientCA.existingSecret=") for s in sets):
        expected_env["ROTATIONS_TLS_CLIENT_CA"] = "/etc/rotations/client-ca/ca.crt"
    if "auth.mode=env" in sets:
        expected_env["ROTATIONS_API_KEY"] = None
    elif any(s.startswith("auth.existingSecret=") for s in sets):
        expected_env["ROTATIONS_API_KEYS_FILE"] = "/etc/rotations/api-keys/api-keys"
    if name.startswith("gpu"):
        expected_env["ROTATIONS_EXECUTION_PROVIDER"] = "cuda"
    deploy, server, env = check_server(docs, expected_env)
    check_tracing(docs, env, sets)
    check_services(docs, tls)
    check_no_secret_material(text)
    expect(notes.returncode == 0 and f"{FULL}-headless.{NAMESPACE}.svc.cluster.local" in notes.stdout,
           f"NOTES.txt does not tell the headless address:\n{notes.stdout}{notes.stderr}")

    if name.startswith("gpu"):
        expect(server["resources"]["limits"].get("nvidia.com/gpu") == 1, "GPU values must ask for nvidia.com/gpu: 1")
        expect(server["image"].endswith(":cuda"), f"GPU values must use the CUDA image, not {server['image']}")
    if "ROTATIONS_API_KEYS_FILE" in env:
        mount = next(m for m in server["volumeMounts"] if m["name"] == "api-keys")
        expect("subPath" not in mount, "a subPath mount would never see a rotated Secret")

    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    expect(bool(hpas) == ("autoscaling.enabled=true" in sets), "HorizontalPodAutoscaler presence")
    for hpa in hpas:
        (metric,) = hpa["spec"]["metrics"]
        expect(metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_METRIC, "HPA metric")
        expect("replicas" not in deploy["spec"], "replicas must be left to the HPA")
    expect(bool(by_kind(docs, "PodDisruptionBudget")) == ("podDisruptionBudget.enabled=false" not in sets), "PDB")
    expect(bool(by_kind(docs, "ServiceMonitor")) == ("metrics.serviceMonitor.enabled=true" in sets), "ServiceMonitor")
    one(docs, "Service", f"{FULL}-metrics")

    jobs = by_kind(docs, "Job")
    expect(bool(jobs) == ("job.enabled=true" in sets), "Job presence")
    for job in jobs:
        expect(job["spec"]["completionMode"] == "Indexed", "the Job must be Indexed")
        pod = job["spec"]["template"]["spec"]
        check_pod_hardening(pod, "Job")
        (client,) = pod["containers"]
        args = client["args"]
        want_server = f"dns:///{FULL}-headless.{NAMESPACE}.svc.cluster.local:{env['ROTATIONS_PORT']['value']}"
        expect(args[:3] == ["analyze", "--server", want_server], f"Job arguments {args[:3]}")
        expect(not client["image"].endswith(":cuda"), "the client needs no CUDA image")
        if "--ca-cert" in args:  # replicas dialled by IP: the certificate is checked against the Service's name
            name = args[args.index("--tls-server-name") + 1] if "--tls-server-name" in args else None
            expect(name == want_server[len("dns:///"):].rsplit(":", 1)[0], f"Job --tls-server-name {name}")
        expect("$(PART)" in args[args.index("--sentences") + 1] and "$(PART)" in args[args.index("--out") + 1],
               "each index needs its own input and output")
        part = env_of(client)["PART"]["valueFrom"]["fieldRef"]["fieldPath"]
        expect(part == "metadata.annotations['batch.kubernetes.io/job-completion-index']", "PART")
        mounts = {m["name"]: m for m in client["volumeMounts"]}
        expect(mounts["corpus"].get("readOnly") is True, "corpus must be mounted read-only")


def check_examples(node_modules):
    """The example manifests validate too, and the adapter rule serves the metric the HPA asks for."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/examples/volumes.yaml").read_text()) if d]
    validate_schemas(docs, node_modules)
    check_pod_hardening(one(docs, "Pod", "rotations-loader")["spec"], "loader")
    adapter = yaml.safe_load((REPO / "deploy/prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    expect(rule["seriesQuery"].startswith(QUEUE_METRIC + "{") and rule["name"]["as"] == QUEUE_METRIC, "adapter rule")
    expect(set(rule["resources"]["overrides"]) == {"namespace", "pod"}, "adapter rule must map namespace and pod")
    return len(docs)


def check_names_match_the_server():
    """The probe services, the metric and the environment variables the chart uses exist in src/."""
    sources = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))
    proto = (REPO / "proto/rotations/v1/rotations.proto").read_text()
    expect(re.search(r"^package rotations\.v1;", proto, re.M) and "service RotationService" in proto, "proto name")
    expect(f'LIVENESS_SERVICE: &str = "{LIVENESS_SERVICE}"' in sources, "liveness service name")
    expect(f'"{QUEUE_METRIC}"' in sources, f"{QUEUE_METRIC} not in src/")
    known = set(re.findall(r'env = "(ROTATIONS_[A-Z_]+)"', sources)) | {"RUST_LOG"}
    templates = "\n".join(p.read_text() for p in (CHART / "templates").glob("*"))
    used = set(re.findall(r"name: ((?:ROTATIONS|RUST)_[A-Z_]+)", templates))
    unknown = used - known
    expect(not unknown, f"the chart sets variables the server does not read: {sorted(unknown)}")


def main():
    helm_bin, node_modules = sys.argv[1], sys.argv[2]
    failures = 0
    for name, (files, sets) in SCENARIOS.items():
        try:
            text, docs, notes = render(helm_bin, files, sets)
            n_k8s, n_crd = validate_schemas(docs, node_modules)
            check_scenario(name, docs, text, notes, sets)
            print(f"ok   {name}: lint, {n_k8s} manifests strict against Kubernetes {KUBERNETES_VERSION}"
                  + (f", {n_crd} ServiceMonitor" if n_crd else "") + ", chart checks")
        except Failure as e:
            failures += 1
            print(f"FAIL {name}: {e}")
    for sets, words in REFUSED:
        out = helm(helm_bin, "template", RELEASE, str(CHART), *helm_args([], sets))
        if out.returncode != 0 and words in out.stderr:
            print(f"ok   refused {' '.join(sets)}: {words}")
        else:
            failures += 1
            print(f"FAIL {' '.join(sets)} should be refused with '{words}': rc {out.returncode} {out.stderr}")
    try:
        n = check_examples(node_modules)
        print(f"ok   deploy/examples: {n} manifests strict against Kubernetes {KUBERNETES_VERSION}; adapter rule")
    except Failure as e:
        failures += 1
        print(f"FAIL examples: {e}")
    try:
        check_names_match_the_server()
        print("ok   probe services, queue metric and environment variables match src/")
    except Failure as e:
        failures += 1
        print(f"FAIL names: {e}")
    print(f"deploy-check: {'FAILED' if failures else 'all passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
