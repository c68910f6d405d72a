//! The examples in deploy/ hang together: their spendgate configs validate, the Kubernetes
//! probes and scrape annotations point at the configured admin port, the image runs as
//! non-root, the dashboard JSON is well formed, and deploy/README.md links every file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use spendgate::config::{Backend, Config};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a multi-document YAML file.
fn documents(rel: &str) -> Vec<serde_json::Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

#[test]
fn compose_config_is_valid_and_matches_the_compose_file() {
    let c = Config::from_file(&deploy().join("compose/spendgate.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.store.backend, Backend::Redis);
    assert_eq!(c.admin.listen.0.port(), 9090);
    let compose = &documents("docker-compose.yaml")[0];
    let ports: Vec<&str> = compose["services"]["spendgate"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // Published on the host's loopback only: the data plane spends with the injected keys.
    assert!(ports.contains(&format!("127.0.0.1:{0}:{0}", c.listen.0.port()).as_str()), "{ports:?}");
    assert!(ports.contains(&"127.0.0.1:9090:9090"), "{ports:?}");
    for service in ["spendgate", "prometheus", "grafana"] {
        for p in compose["services"][service]["ports"].as_array().unwrap() {
            assert!(p.as_str().unwrap().starts_with("127.0.0.1:"), "{service} publishes {p} beyond loopback");
        }
    }
    // Prometheus sends the admin token that /metrics needs.
    let prom = read("prometheus/prometheus.yml");
    assert!(prom.contains("credentials_file: /run/secrets/spendgate_admin_token"), "{prom}");
    assert_eq!(compose["secrets"]["spendgate_admin_token"]["environment"], c.admin.token_env.as_str());
    for service in ["spendgate", "redis", "prometheus", "grafana"] {
        assert!(compose["services"][service].is_object(), "compose has {service}");
    }
}

#[test]
fn kubernetes_sidecar_config_probes_and_annotations_agree() {
    let docs = documents("kubernetes/spendgate-sidecar.yaml");
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    let yaml = cm["data"]["spendgate.yaml"].as_str().unwrap();
    let c = Config::from_yaml(yaml, "ConfigMap spendgate.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.store.backend, Backend::Redis);
    let admin_port = c.admin.listen.0.port();
    assert!(!c.admin.listen.0.ip().is_loopback(), "probes and Prometheus must reach the admin port");
    assert!(c.listen.0.ip().is_loopback(), "the data plane spends with the injected keys: loopback only");
    let policy = docs.iter().find(|d| d["kind"] == "NetworkPolicy").expect("a NetworkPolicy for the admin port");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], admin_port);

    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let pod = &deployment["spec"]["template"];
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spendgate")
        .expect("the sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["ports"][0]["containerPort"], admin_port);
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    // Mounted as a directory: a subPath mount would never see ConfigMap updates.
    let mount = &sidecar["volumeMounts"][0];
    assert!(mount.get("subPath").is_none());
    let config_arg = sidecar["args"].as_array().unwrap().iter().skip_while(|a| *a != "--config").nth(1).unwrap();
    assert!(config_arg.as_str().unwrap().starts_with(mount["mountPath"].as_str().unwrap()));
    let env: Vec<&str> = sidecar["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(env.contains(&c.admin.token_env.as_str()));
    for p in c.providers.values() {
        if let Some(k) = &p.api_key_env {
            assert!(env.contains(&k.as_str()), "the sidecar gets {k}");
        }
    }
    assert!(documents("kubernetes/redis.yaml")
        .iter()
        .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == "redis"));
    assert!(c.store.url.contains("//redis."), "{}", c.store.url);
}

#[test]
fn the_image_is_multi_stage_and_runs_as_non_root() {
    let d = read("Dockerfile");
    assert!(d.lines().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    let user = d.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "0" && uid != "root", "USER {user}");
    assert!(d.contains("--locked"), "builds from Cargo.lock");
    // The working directory (the embedded store's database) is a volume the user can write.
    let workdir = d.lines().rev().find_map(|l| l.strip_prefix("WORKDIR ")).expect("a WORKDIR line").trim();
    assert!(d.contains(&format!("VOLUME {workdir}")), "VOLUME {workdir}");
    assert!(
        d.contains(&format!("--chown={}", user.trim())) && d.contains(workdir),
        "{workdir} owned by {user}"
    );
}

#[test]
fn kubernetes_embedded_store_keeps_its_database_on_a_persistent_volume() {
    let docs = documents("kubernetes/spendgate-embedded.yaml");
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    let c = Config::from_yaml(cm["data"]["spendgate.yaml"].as_str().unwrap(), "ConfigMap").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.store.backend, Backend::Memory);
    let set = docs.iter().find(|d| d["kind"] == "StatefulSet").expect("a StatefulSet");
    assert_eq!(set["spec"]["replicas"], 1, "one process owns a database");
    let claim = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str().unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim)
        .expect("the claim is mounted");
    assert!(
        c.store.path.starts_with(mount["mountPath"].as_str().unwrap()),
        "{:?} on the volume",
        c.store.path
    );
    assert_eq!(set["spec"]["template"]["spec"]["securityContext"]["fsGroup"], 65532);
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let v: serde_json::Value = serde_json::from_str(&read("grafana/dashboards/spendgate.json")).unwrap();
    assert_eq!(v["uid"], "spendgate");
    let panels = v["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "panel ids are unique");
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", p["title"]);
            assert!(
                targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("spendgate_"))),
                "{}",
                p["title"]
            );
        }
    }
}

#[test]
fn readme_links_every_file() {
    let readme = read("README.md");
    let mut stack = vec![deploy()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(deploy()).unwrap().to_str().unwrap().to_string();
            if rel != "README.md" {
                assert!(readme.contains(&format!("]({rel})")), "deploy/README.md does not link {rel}");
            }
        }
    }
}
