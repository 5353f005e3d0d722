//! Bad configuration: the planes exit non-zero naming the setting.

use gateway_tests::SnapshotKeys;
use gateway_tests::process::PlaneProcess;

use super::START;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_naming_the_setting() {
    let keys = SnapshotKeys::generate();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                "/nonexistent/signing.pem".into(),
                "--key-encryption-key-file".into(),
                keys.kek_path(),
            ],
            "/nonexistent/signing.pem",
        ),
        // required flags are marked as such: clap names the missing one
        ("control-plane", vec![], "--snapshot-signing-key-file"),
        ("data-plane", vec![], "--snapshot-verify-key-file"),
        (
            "control-plane",
            vec!["--snapshot-signing-key-file".into(), keys.signing_path()],
            "--key-encryption-key-file",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--key-encryption-key-file".into(),
                keys.verify_path(),
            ],
            "--key-encryption-key-file",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--listen".into(),
                "localhost-ish:99999".into(),
            ],
            "--listen",
        ),
        (
            "control-plane",
            // a public key where the private one belongs: the validator names the file
            vec![
                "--snapshot-signing-key-file".into(),
                keys.verify_path(),
                "--key-encryption-key-file".into(),
                keys.kek_path(),
            ],
            "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--key-encryption-key-file".into(),
                keys.kek_path(),
                "--mail-outbox".into(),
                keys.outbox_path(),
                "--store-prefix".into(),
                "has.dots".into(),
            ],
            "--store-prefix",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                "/nonexistent/verify.pem".into(),
            ],
            "--snapshot-verify-key-file",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--ops-listen".into(),
                "nope".into(),
            ],
            "--ops-listen",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--drain-timeout".into(),
                "ten seconds".into(),
            ],
            "--drain-timeout",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--routing-file".into(),
                "/nonexistent/routing.json".into(),
            ],
            "--routing-file",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--routing-file".into(),
                // a file that is not a routing document
                keys.verify_path(),
            ],
            "not a routing document",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--max-in-flight".into(),
                "0".into(),
            ],
            "--max-in-flight",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--key-encryption-key-file".into(),
                keys.kek_path(),
                "--mail-outbox".into(),
                std::env::temp_dir()
                    .join("gateway-config-test-outbox")
                    .to_str()
                    .unwrap()
                    .into(),
                "--cors-allowed-origins".into(),
                "https://admin.example.com,*".into(),
            ],
            "--cors-allowed-origins",
        ),
    ];
    let secret_lines: Vec<String> = std::fs::read_to_string(keys.signing_path())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    assert!(!secret_lines.is_empty());
    for (bin, args, setting) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = PlaneProcess::spawn(bin, &args, &[]);
        let status = process.wait_exit(START);
        let stderr = process.stderr().join("\n");
        // 2: bad configuration, refused before anything started
        assert_eq!(status.code(), Some(2), "{bin} {args:?}: {stderr}");
        assert!(stderr.contains(setting), "{bin} {args:?}: {stderr}");
        // the private key never appears in an error
        for line in secret_lines.iter() {
            assert!(!stderr.contains(line.as_str()), "{stderr}");
        }
    }
    // a port in use: the listen setting and the address are named, exit 1 (not a usage
    // error); a bootstrap password the policy refuses names the file's setting
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak-password");
    std::fs::write(&weak, "short").unwrap();
    // (binary, flags, exit code, what the error names): both are found at run time, 1
    // a control plane on its own embedded store with every required setting, plus `extra`
    let control_plane = |state: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--snapshot-signing-key-file".into(),
            keys.signing_path(),
            "--key-encryption-key-file".into(),
            keys.kek_path(),
            "--store".into(),
            "embedded".into(),
            "--embedded-path".into(),
            dir.path().join(state).to_str().unwrap().into(),
            "--mail-outbox".into(),
            dir.path().join("outbox").to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let runtime_cases: Vec<(&str, Vec<String>, i32, Vec<&str>)> = vec![
        (
            "control-plane",
            control_plane("taken.redb", &["--listen", &taken_addr]),
            1,
            vec!["cannot listen on", taken_addr.as_str(), "--listen"],
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--listen".into(),
                taken_addr.clone(),
            ],
            1,
            vec!["cannot listen on", taken_addr.as_str(), "--listen"],
        ),
        (
            "control-plane",
            control_plane(
                "state.redb",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--bootstrap-admin-email",
                    "admin@example.com",
                    "--bootstrap-admin-password-file",
                    weak.to_str().unwrap(),
                ],
            ),
            1,
            vec!["--bootstrap-admin-password-file"],
        ),
    ];
    for (bin, args, code, wanted) in runtime_cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = PlaneProcess::spawn(bin, &args, &[]);
        let status = process.wait_exit(START);
        assert_eq!(status.code(), Some(code), "{bin} {args:?}");
        let stderr = process.stderr().join("\n");
        for part in wanted {
            assert!(
                stderr.contains(part),
                "{bin} {args:?}: {part} not in {stderr}"
            );
        }
        assert!(!stderr.contains("invalid setting"), "{stderr}");
    }
    drop(taken);

    // --help groups the flags under headings and states the exit codes
    for (bin, headings) in [
        (
            "control-plane",
            &[
                "Tokens and sessions:",
                "Abuse limits:",
                "First platform admin:",
                "State store:",
                "Logging:",
            ][..],
        ),
        (
            "data-plane",
            &[
                "Tokens and published documents:",
                "Upstream calls:",
                "State store:",
                "Logging:",
                "TLS to upstreams and control planes:",
            ][..],
        ),
    ] {
        let output = std::process::Command::new(gateway_tests::process::bin_path(bin))
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        let help = String::from_utf8_lossy(&output.stdout);
        for heading in headings {
            assert!(
                help.lines().any(|l| l == *heading),
                "{bin}: {heading} not in {help}"
            );
        }
        assert!(
            help.contains("Exit codes: 0") && help.contains("2 bad"),
            "{help}"
        );
        // required flags are marked in the usage line
        let required = match bin {
            "control-plane" => &["--snapshot-signing-key-file", "--key-encryption-key-file"][..],
            _ => &["--snapshot-verify-key-file"][..],
        };
        let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
        for flag in required {
            assert!(usage.contains(flag), "{bin}: {flag} not in {usage}");
        }
        if bin == "data-plane" {
            // the code the server answers with when it sheds load
            // (its own description: up to the next flag)
            let after = help.split_once("--max-in-flight <").unwrap().1;
            let own = after.split("\n      --").next().unwrap();
            assert!(own.contains("load_shed"), "{own}");
        }
    }

    // a setting from the environment is named too
    let mut process = PlaneProcess::spawn(
        "control-plane",
        &["--key-encryption-key-file", &keys.kek_path()],
        &[(
            "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE",
            "/nonexistent/from-env.pem",
        )],
    );
    assert!(!process.wait_exit(START).success());
    assert!(
        process
            .stderr()
            .join("\n")
            .contains("/nonexistent/from-env.pem")
    );
}
