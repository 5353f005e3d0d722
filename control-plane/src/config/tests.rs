//! Flags and environment of the control plane: defaults, validation, and the messages that name a bad setting.

use super::*;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("control-plane").chain(args.iter().copied()))
}

fn with_keys(files: &KeyFiles, extra: &[&str]) -> Result<Cli, clap::Error> {
    let mut args = vec![
        "--snapshot-signing-key-file",
        files.snapshot_signing.to_str().unwrap(),
        "--key-encryption-key-file",
        files.key_encryption.to_str().unwrap(),
        "--mail-outbox",
        "/tmp/outbox.txt",
    ];
    args.extend_from_slice(extra);
    parse(&args)
}

#[test]
fn missing_secret_files_name_the_setting() {
    // both are required flags: clap refuses a command line without them, naming them
    let err = parse(&["--store", "embedded"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let text = err.to_string();
    assert!(text.contains("--snapshot-signing-key-file"), "{text}");
    assert!(text.contains("--key-encryption-key-file"), "{text}");
    // the subcommands do not need them
    assert!(parse(&["keygen", "--out-dir", "/nonexistent"]).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let files = keygen(dir.path(), false).unwrap();
    let kek = files.key_encryption.to_str().unwrap();
    let cli = parse(&[
        "--snapshot-signing-key-file",
        "/nonexistent/key.pem",
        "--key-encryption-key-file",
        kek,
    ])
    .unwrap();
    let err = cli.serve.validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("GATEWAY_SNAPSHOT_SIGNING_KEY_FILE")
    );
    assert!(err.to_string().contains("/nonexistent/key.pem"));
    let cli = parse(&[
        "--snapshot-signing-key-file",
        files.snapshot_signing.to_str().unwrap(),
        "--key-encryption-key-file",
        "/nonexistent/kek",
    ])
    .unwrap();
    let err = cli.serve.validate().unwrap_err();
    assert!(
        err.to_string().contains("--key-encryption-key-file"),
        "{err}"
    );
    std::fs::write(&files.key_encryption, "c2hvcnQ=").unwrap();
    let err = with_keys(&files, &[])
        .unwrap()
        .serve
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
}

#[test]
fn keygen_writes_a_usable_set() {
    let dir = tempfile::tempdir().unwrap();
    let files = keygen(dir.path(), false).unwrap();
    assert!(keygen(dir.path(), false).is_err(), "no silent overwrite");
    let config = with_keys(&files, &["--store", "embedded"])
        .unwrap()
        .serve
        .validate()
        .unwrap();
    let keys = gateway_core::signed::DocVerifyingKeys::from_pem_bundle(
        &std::fs::read_to_string(&files.snapshot_verify).unwrap(),
    )
    .unwrap();
    assert_eq!(
        keys.key_ids().collect::<Vec<_>>(),
        vec![config.signing_key.key_id()]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in [&files.snapshot_signing, &files.key_encryption] {
            let mode = std::fs::metadata(secret).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} is not readable by others",
                secret.display()
            );
        }
    }
    assert!(keygen(dir.path(), true).is_ok());
}

#[test]
fn malformed_values_are_refused_by_name() {
    let err = parse(&["--listen", "not-an-address"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--listen"), "{err}");
    let err = parse(&["--store", "sqlite"]).unwrap_err().to_string();
    assert!(err.contains("--store"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let files = keygen(dir.path(), false).unwrap();
    for (args, setting) in [
        (vec!["--store-prefix", "bad.prefix"], "--store-prefix"),
        (vec!["--access-token-ttl", "1h"], "--access-token-ttl"),
        (vec!["--password-min-length", "6"], "--password-min-length"),
        (vec!["--argon2-memory-kib", "1024"], "--argon2-memory-kib"),
        (
            vec!["--key-rotation-interval", "5m"],
            "--key-rotation-interval",
        ),
        (vec!["--token-issuer", " "], "--token-issuer"),
    ] {
        let err = with_keys(&files, &args)
            .unwrap()
            .serve
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains(setting), "{args:?}: {err}");
    }
    let err = with_keys(&files, &["--token-signing-alg", "HS256"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--token-signing-alg"), "{err}");
    assert!(
        with_keys(&files, &["--token-signing-alg", "ES256"])
            .unwrap()
            .serve
            .validate()
            .is_ok()
    );
}
