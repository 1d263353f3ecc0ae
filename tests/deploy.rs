//! What `deploy/` ships: the systemd unit is hardened, the container and compose files name
//! files that exist and a valid configuration, the Kubernetes manifests validate and drain
//! streams before they stop, and the license is there.

use std::process::Command;

#[test]
fn the_systemd_unit_is_rated_ok_by_systemd_analyze() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/unpoll.service")])
        .output()
        .expect("systemd-analyze (./scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let overall = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let score: f64 =
        overall.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(score <= 2.0, "the unit is rated {overall}");
    let unit = include_str!("../deploy/unpoll.service");
    for line in [
        "Type=notify",
        "RuntimeDirectory=unpoll",
        "LimitNOFILE=",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} is missing from the unit");
    }
}

#[test]
fn the_license_the_manifest_names_is_there() {
    let license = include_str!("../LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(include_str!("../Cargo.toml").contains("license = \"Apache-2.0\""));
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> yaml_serde::Value {
    let mut v: yaml_serde::Value = yaml_serde::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    v.apply_merge().unwrap();
    v
}

/// `unpoll check` on `text`, with the cluster-internal names it resolves (which do not
/// resolve here) replaced by this host.
fn check_config(name: &str, text: &str, hosts: &[&str]) {
    let mut text = text.to_string();
    for host in hosts {
        text = text.replace(&format!("\"{host}:"), "\"127.0.0.1:").replace(&format!("//{host}:"), "//127.0.0.1:");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unpoll.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_unpoll")).arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_dockerfile_builds_from_files_that_exist_and_runs_unpoll_unprivileged() {
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(stages, 2, "a build stage and a run stage");
    for line in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(std::path::Path::new(&format!("{ROOT}/{source}")).exists(), "COPY {source}: no such file");
        }
    }
    let has = |line: &str| lines.iter().any(|l| l.trim() == line);
    assert!(has(r#"ENTRYPOINT ["/usr/local/bin/unpoll"]"#) && has(r#"CMD ["run", "-c", "/etc/unpoll/unpoll.yaml"]"#));
    assert!(has("COPY deploy/docker/unpoll.yaml /etc/unpoll/unpoll.yaml"), "the configuration the entry point reads");
    assert!(has("STOPSIGNAL SIGTERM") && has("EXPOSE 8080 9090"));
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    // The image's configuration is valid and listens where EXPOSE says, on every interface.
    let config = read("deploy/docker/unpoll.yaml");
    assert!(config.contains(r#"listen: ["0.0.0.0:8080"]"#) && config.contains(r#"admin: "0.0.0.0:9090""#));
    check_config("deploy/docker/unpoll.yaml", &config, &["legacy-api"]);
    // The compose file's `secret` service makes the cluster's secret; here, a file of ours.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef".repeat(4)).unwrap();
    let cluster = read("deploy/docker/cluster.yaml");
    assert!(cluster.contains("secret_file: /run/secrets/unpoll/cluster"), "the compose file's secret");
    let cluster = cluster.replace("/run/secrets/unpoll/cluster", &secret.path().display().to_string());
    check_config("deploy/docker/cluster.yaml", &cluster, &["api", "redis"]);
    let ignore = read(".dockerignore");
    for entry in ["target/", "**/node_modules/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore leaves out {entry}");
    }
}

#[test]
fn the_compose_files_parse_and_name_files_that_exist() {
    for (file, services) in [
        ("deploy/docker-compose.yml", &["unpoll", "prometheus", "grafana"][..]),
        (
            "deploy/docker-compose.cluster.yml",
            &["secret", "redis", "api", "node-a", "node-b", "node-c", "prometheus"][..],
        ),
    ] {
        let compose = yaml(file);
        let defined = compose["services"].as_mapping().unwrap_or_else(|| panic!("{file}: no services"));
        let names: Vec<&str> = defined.keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(names, services, "{file}");
        for (name, service) in defined {
            let name = name.as_str().unwrap();
            assert!(service["image"].is_string(), "{file}: {name} has no image");
            if let Some(build) = service.get("build") {
                let context = format!("{ROOT}/deploy/{}", build["context"].as_str().unwrap());
                let dockerfile = format!("{context}/{}", build["dockerfile"].as_str().unwrap());
                assert!(std::path::Path::new(&dockerfile).is_file(), "{file}: {name}: {dockerfile}");
            }
            for volume in service.get("volumes").and_then(|v| v.as_sequence()).into_iter().flatten() {
                let source = volume.as_str().unwrap().split(':').next().unwrap();
                if !source.starts_with("./") {
                    // A named volume, which the file declares.
                    assert!(
                        compose["volumes"].get(source).is_some(),
                        "{file}: {name}: volume {source} is not declared"
                    );
                    continue;
                }
                let path = format!("{ROOT}/deploy/{source}");
                assert!(std::path::Path::new(&path).exists(), "{file}: {name} mounts {path}, which is missing");
            }
            if service["image"] == "unpoll:dev" {
                let command: Vec<&str> =
                    service["command"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
                assert!(["demo", "run"].contains(&command[0]), "{file}: {name}: {command:?}");
                // The command parses as the binary takes it (its help for the subcommand).
                let out = Command::new(env!("CARGO_BIN_EXE_unpoll")).arg(command[0]).arg("--help").output().unwrap();
                assert!(out.status.success());
                for flag in command.iter().filter(|c| c.starts_with("--")) {
                    assert!(String::from_utf8_lossy(&out.stdout).contains(flag), "{file}: {name}: {flag}");
                }
            }
        }
    }
    // Every cluster node reads the secret the `secret` service made, once it has.
    let cluster = yaml("deploy/docker-compose.cluster.yml");
    for node in ["node-a", "node-b", "node-c"] {
        let node = &cluster["services"][node];
        let mounts: Vec<&str> = node["volumes"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert!(mounts.contains(&"cluster-secret:/run/secrets/unpoll:ro"), "{mounts:?}");
        assert_eq!(node["depends_on"]["secret"]["condition"], "service_completed_successfully");
    }
    // Grafana is provisioned with the dashboard file and a datasource of the uid it names.
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/unpoll.json")).unwrap();
    assert_eq!(datasource["datasources"][0]["uid"].as_str(), dashboard["panels"][0]["datasource"]["uid"].as_str());
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(prometheus["rule_files"][0], "/etc/prometheus/alerts.yaml");
}

fn kubernetes(kind: &str) -> yaml_serde::Value {
    let file = format!("deploy/kubernetes/{kind}.yaml");
    yaml(&file)
}

#[test]
fn the_kubernetes_manifests_validate_and_drain_streams_before_they_stop() {
    let validate = std::env::var("UNPOLL_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| format!("{ROOT}/target/tools/venv/bin/kubernetes-validate"));
    let kustomization = kubernetes("kustomization");
    let files: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("{ROOT}/deploy/kubernetes/{}", r.as_str().unwrap()))
        .collect();
    let out = Command::new(&validate)
        .args(["--strict", "--kubernetes-version", "1.30"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{validate}: {e} (./scripts/deps.sh installs it)"));
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for kind in ["configmap", "deployment", "service", "poddisruptionbudget"] {
        assert!(said.contains(&format!("{kind}.yaml passed")), "{kind} was not validated: {said}");
    }
    // The image: a kustomize `images:` entry with the version as its tag, pulled only when absent.
    let image = &kustomization["images"][0];
    assert_eq!(image["name"], "unpoll");
    assert_eq!(image["newTag"].as_str(), Some(env!("CARGO_PKG_VERSION")), "the image tag is the version");
    let deployment = kubernetes("deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "unpoll", "the tag comes from kustomization.yaml");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    // The ServiceMonitor is a custom resource: no schema here, so its fields are checked.
    let monitor = kubernetes("servicemonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");

    let config_map = kubernetes("configmap");
    let config_text = config_map["data"]["unpoll.yaml"].as_str().unwrap();
    check_config("the ConfigMap's unpoll.yaml", config_text, &["legacy-api"]);
    let config: yaml_serde::Value = yaml_serde::from_str(config_text).unwrap();
    let seconds = |v: &yaml_serde::Value| v.as_str().unwrap().trim_end_matches('s').parse::<u64>().unwrap();
    let grace = seconds(&config["server"]["grace_period"]);

    let deployment = kubernetes("deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(pause > 0 && termination > pause + grace, "{termination} s must exceed {pause} s + grace_period {grace} s");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let admin_port = config["server"]["admin"].as_str().unwrap().rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let ports = container["ports"].as_sequence().unwrap();
    assert!(ports.iter().any(|p| p["name"] == "admin" && p["containerPort"].as_u64() == Some(admin_port)));
    assert_eq!(container["args"].as_sequence().unwrap().len(), 3);
    assert_eq!(container["args"][2], "/etc/unpoll/unpoll.yaml");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        container["resources"]["requests"]["cpu"].is_string()
            && container["resources"]["requests"]["memory"].is_string()
    );
    // Mounted whole, so that a ConfigMap edit reaches the file (a subPath mount never updates).
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let config_mount = mounts.iter().find(|m| m["name"] == "config").unwrap();
    assert_eq!(config_mount["mountPath"], "/etc/unpoll");
    assert!(config_mount.get("subPath").is_none());
    // The upgrade socket is somewhere writable.
    assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"));
    assert!(config["server"]["upgrade_sock"].as_str().unwrap().starts_with("/tmp/"));
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
}
