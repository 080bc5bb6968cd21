//! `pgvault key add | list | remove | passwd` through the real binary, on the local
//! backend and on S3 (SeaweedFS on 127.0.0.1): several passphrases, one master key.

mod common;

use common::s3::S3Server;
use common::vault::Vault;

/// The whole key life cycle on one initialised vault.
fn key_life_cycle(v: &Vault) {
    let first = v.run(&["key", "list", "--json"]).ok().json();
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["current"], true);
    let original_id = first[0]["id"].as_str().unwrap().to_string();

    // The last key cannot be removed.
    let e = v.run(&["key", "remove", &original_id]).fails();
    assert!(e.contains("last key"), "{e}");

    // Add a second passphrase from the environment; both open the repository.
    common::succeeded(
        v.command(&["key", "add"])
            .env("PGVAULT_NEW_PASSWORD", "second passphrase")
            .output()
            .unwrap(),
        "key add",
    );
    let keys = v.run(&["key", "list", "--json"]).ok().json();
    let keys = keys.as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    let second_id = keys
        .iter()
        .find(|k| k["id"] != original_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let table = v.run(&["key", "list"]).ok().out();
    assert!(table.contains(&format!("* {original_id}")), "{table}");
    assert!(table.contains("2 keys"), "{table}");

    let as_second = |args: &[&str]| {
        let mut c = v.command(args);
        c.env("PGVAULT_PASSWORD", "second passphrase");
        c.output().unwrap()
    };
    let o = as_second(&["key", "list", "--json"]);
    assert!(o.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let current: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .collect();
    assert_eq!(current[0]["id"], second_id.as_str());

    // The key in use cannot remove itself; the other key can remove it (by prefix).
    let e = v.run(&["key", "remove", &original_id]).fails();
    assert!(e.contains("opened") && e.contains("key passwd"), "{e}");
    let o = as_second(&["key", "remove", &original_id[..10]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The removed key no longer opens the repository: the wrong-passphrase exit code.
    let r = v.run(&["snapshots"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("Wrong passphrase"), "{}", r.stderr);
    assert!(as_second(&["snapshots"]).status.success());
    let e = as_second(&["key", "remove", &second_id]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("last key"));
    let e = as_second(&["key", "remove", "0123456789abcdef"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not found"));

    // passwd from a file: the new passphrase replaces the one in use.
    let pf = v.dir.path().join("new-pass");
    std::fs::write(&pf, "third passphrase\n").unwrap();
    let o = as_second(&["key", "passwd", "--new-password-file", pf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(as_second(&["snapshots"]).status.code(), Some(3));
    let mut third = v.command(&["key", "list", "--json"]);
    third.env("PGVAULT_PASSWORD", "third passphrase");
    let o = common::succeeded(
        third.output().unwrap(),
        "key list with the third passphrase",
    );
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // No new passphrase and no terminal: a clear refusal, nothing added.
    let mut c = v.command(&["key", "add"]);
    c.env("PGVAULT_PASSWORD", "third passphrase")
        .env_remove("PGVAULT_NEW_PASSWORD");
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No new passphrase"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn keys_on_the_local_backend() {
    let v = Vault::init_local();
    key_life_cycle(&v);
    assert_eq!(v.objects("keys").len(), 1);
}

#[test]
fn keys_on_s3() {
    let server = S3Server::start();
    let bucket = server.new_bucket("keys");
    let v = Vault::s3(&server, &bucket, "repo");
    v.init();
    key_life_cycle(&v);
    assert_eq!(server.keys(&bucket, "repo/keys/").len(), 1);
}
