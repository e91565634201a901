//! Payments on a real chain: anvil (a local Ethereum dev node, chain id 98765, installed by
//! tests/install-deps.sh) on loopback, two `chiral` processes moving a file over BitTorrent,
//! the downloader paying the seeder for the verified bytes it delivered.
//!
//! Without anvil the tests fail (never skip): `bash tests/install-deps.sh` installs it.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use chiral_tests::{bt::*, *};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const PRICE: u128 = 1_000_000_000_000_000; // wei per MiB
const PASS: &str = "test passphrase";

/// anvil on a free loopback port; killed when dropped.
struct Anvil {
    child: Child,
    port: u16,
    /// The first dev account's private key (funded).
    key: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn anvil_bin() -> PathBuf {
    let p = root().join("target/test-tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(p.is_file(), "anvil is missing at {}: `bash tests/install-deps.sh` installs it", p.display());
    p
}

impl Anvil {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("anvil.log");
        let child = Command::new(anvil_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--chain-id", "98765", "--accounts", "2"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn anvil");
        let mut a = Anvil { child, port, key: String::new(), log, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(30), || a.try_rpc("eth_chainId", json!([])).is_some()),
            "anvil did not answer: {}",
            std::fs::read_to_string(&a.log).unwrap_or_default()
        );
        assert_eq!(a.rpc("eth_chainId", json!([])), json!("0x181cd"));
        // Its banner (with the keys) may reach the log file after the RPC answers.
        let key = |log: &Path| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let keys = &text[text.find("Private Keys")?..];
            keys.lines().find_map(|l| l.strip_prefix("(0) ")).map(|k| k.trim().to_string()).filter(|k| k.len() == 66)
        };
        let mut found = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                found = key(&a.log);
                found.is_some()
            }),
            "anvil listed no dev key: {}",
            std::fs::read_to_string(&a.log).unwrap_or_default()
        );
        a.key = found.unwrap();
        a
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_rpc(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
        let v: Value = serde_json::from_str(&http(self.port, "POST", "/", "", &body)?).ok()?;
        v.get("result").cloned()
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params.clone()).unwrap_or_else(|| panic!("anvil: {method} {params} failed"))
    }

    fn int(&self, method: &str, params: Value) -> u128 {
        let v = self.rpc(method, params);
        u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    fn balance(&self, a: &str) -> u128 {
        self.int("eth_getBalance", json!([a, "latest"]))
    }

    fn sent(&self, a: &str) -> u128 {
        self.int("eth_getTransactionCount", json!([a, "latest"]))
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (extra header lines in `headers`); the body of
/// a 2xx answer.
fn http(port: u16, method: &str, path: &str, headers: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    if !resp.starts_with("HTTP/1.1 2") {
        return None;
    }
    Some(resp[resp.find("\r\n\r\n")? + 4..].trim().to_string())
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node with `[payments]` on `rpc` (and `extra` config lines).
fn node(rpc: &str, threshold: u128, extra: &str) -> Chiral {
    let n = Chiral::new();
    write_config(&n, rpc, threshold, extra);
    n
}

fn write_config(n: &Chiral, rpc: &str, threshold: u128, extra: &str) {
    let conf = format!(
        "no_dht = true\nlisten = \"127.0.0.1\"\n{extra}\n[payments]\nrpc = \"{rpc}\"\nchain_id = 98765\nprice_per_mib = \"{PRICE}\"\nthreshold_wei = \"{threshold}\"\nmax_fee_wei = \"1000000000000000\"\nsettle_timeout = 20\n"
    );
    std::fs::write(n.data_dir.path().join("config/chiral/config.toml"), conf).unwrap();
}

fn run(n: &Chiral, args: &[&str]) -> std::process::Output {
    run_with_timeout(n.cmd().env("CHIRAL_WALLET_PASSPHRASE", PASS).args(args), Duration::from_secs(240))
}

fn ok(n: &Chiral, args: &[&str]) -> std::process::Output {
    let o = run(n, args);
    assert!(o.status.success(), "chiral {args:?}: {}", stderr(&o));
    o
}

fn address(n: &Chiral) -> String {
    json_of(&ok(n, &["wallet", "address", "--json"]))["address"].as_str().unwrap().to_string()
}

/// A payer with the funded dev key, a payee with a new wallet.
fn wallets(chain: &Anvil, payer: &Chiral, payee: &Chiral) -> (String, String) {
    let key = payer.data_dir.path().join("key");
    std::fs::write(&key, format!("{}\n", chain.key)).unwrap();
    ok(payer, &["wallet", "import", "--private-key-file", key.to_str().unwrap()]);
    ok(payee, &["wallet", "new"]);
    (address(payer), address(payee))
}

/// Seeds a new file of `mib` MiB over BitTorrent from `seeder`; the torrent and the file's hash.
fn seed(seeder: &Chiral, tracker: &Tracker, name: &str, mib: u64, tag: u64) -> (Proc, Fixture, PathBuf) {
    let f = fixture(name, mib * MIB, tag);
    let tor = f.dir.path().join(format!("{name}.torrent"));
    mktorrent(&f.file, &tor, &tracker.url(), 18, true);
    let (p, _) = start_seed(seeder, &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url()], 1);
    let ih = info_hash_of(&tor);
    assert!(wait_until(Duration::from_secs(30), || !tracker.ports(&ih).is_empty()), "the seed never announced");
    (p, f, tor)
}

fn get(n: &Chiral, tor: &Path, out: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = n.cmd();
    c.env("CHIRAL_WALLET_PASSPHRASE", PASS).args([
        "get",
        tor.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
        "-q",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    run_with_timeout(&mut c, Duration::from_secs(240))
}

/// `chiral payments --json`: (owed, paid, transaction count) for `wallet`.
fn ledger(n: &Chiral, wallet: &str) -> (u128, u128, usize, Value) {
    let v = json_of(&ok(n, &["payments", "--json"]));
    let e = v["payments"].as_array().unwrap().iter().find(|e| e["wallet"] == wallet).cloned().unwrap_or(json!({}));
    let num = |x: &Value| x.as_str().map_or(0, |s| s.parse::<u128>().unwrap());
    (num(&e["owed_wei"]), num(&e["paid_wei"]), e["transactions"].as_array().map_or(0, Vec::len), v)
}

fn wei(bytes: u64) -> u128 {
    bytes as u128 * PRICE / MIB as u128
}

/// A chain, a tracker and two nodes paying at `threshold`: the payer (with the funded dev
/// key) and the payee (a new wallet), with their addresses.
struct Pair {
    chain: Anvil,
    tracker: Tracker,
    dl: Chiral,
    sd: Chiral,
    payer: String,
    payee: String,
}

fn pair(threshold: u128) -> Pair {
    let chain = Anvil::start();
    let tracker = Tracker::start();
    let (dl, sd) = (node(&chain.url(), threshold, ""), node(&chain.url(), threshold, ""));
    let (payer, payee) = wallets(&chain, &dl, &sd);
    Pair { chain, tracker, dl, sd, payer, payee }
}

#[test]
fn a_bittorrent_download_pays_its_seeder_to_the_wei() {
    // Paid at 2 MiB owed during the download, the rest at its end.
    let Pair { chain, tracker, dl, sd, payer, payee } = pair(2 * PRICE);
    let b0 = chain.balance(&payer);
    let (_seed, f, tor) = seed(&sd, &tracker, "paid.bin", 6, 61);
    let out = dl.data_dir.path().join("out");
    let o = get(&dl, &tor, &out, &[]);
    assert!(o.status.success(), "get: {}", stderr(&o));
    assert_eq!(sha256_file(&out.join("paid.bin")), f.sha);
    let want = wei(6 * MIB);
    assert_eq!(chain.balance(&payee), want, "the seeder got exactly 6 MiB's worth");
    let (owed, paid, ntx, v) = ledger(&dl, &payee);
    assert_eq!((owed, paid), (0, want), "{v}");
    assert!(ntx >= 2, "paid at the threshold and at the end: {v}");
    assert_eq!(chain.sent(&payer), ntx as u128, "the ledger lists every transaction sent");
    let spent = b0 - chain.balance(&payer);
    assert!(spent > want && spent - want <= ntx as u128 * 1_000_000_000_000_000, "fees bounded: {spent}");
    for t in v["payments"][0]["transactions"].as_array().unwrap() {
        assert_eq!(t["state"], "confirmed", "{v}");
        let tx = chain.rpc("eth_getTransactionByHash", json!([t["hash"]]));
        assert_eq!(tx["chainId"], "0x181cd", "signed for chain 98765: {tx}");
    }
    // The seeder owes nothing, sent nothing, and sees what it received against what it served.
    assert_eq!(chain.sent(&payee), 0);
    let (owed, paid, ntx, v) = ledger(&sd, &payer);
    assert_eq!((owed, paid, ntx), (0, 0, 0), "uploading creates no debt: {v}");
    let r = json_of(&ok(&sd, &["payments", "received", "--json"]));
    assert_eq!(r["total_wei"], want.to_string(), "{r}");
    assert_eq!(r["received"][0]["from"], payer, "{r}");
    assert!(r["received"][0]["served_bytes"].as_u64().unwrap() >= 5 * MIB, "{r}");
    let b = json_of(&ok(&sd, &["wallet", "balance", "--json"]));
    assert_eq!(b["balance_wei"], want.to_string(), "{b}");
}

/// `chiral daemon` pays what a download owes as soon as it completes, below the threshold
/// too (as `chiral get` does before it exits), and its API shows the payment.
#[test]
fn the_daemon_pays_a_finished_download_below_the_threshold() {
    let Pair { chain, tracker, dl, sd, payer: _, payee } = pair(1000 * PRICE);
    let (_seed, f, tor) = seed(&sd, &tracker, "daemon-paid.bin", 3, 63);
    let (daemon, rx) =
        spawn_printing_env(&dl, "daemon", &["--http", "127.0.0.1:0"], &[("CHIRAL_WALLET_PASSPHRASE", PASS)]);
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no URL: {}", daemon.log_text()));
    let (port, token) = line.strip_prefix("http://127.0.0.1:").and_then(|r| r.split_once("/#token=")).expect("URL");
    let port: u16 = port.parse().unwrap();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let api = |method: &str, path: &str, body: &Value| -> Value {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let text = http(port, method, path, &auth, &body)
            .unwrap_or_else(|| panic!("{method} {path} failed: {}", daemon.log_text()));
        serde_json::from_str(&text).unwrap()
    };
    let out = dl.data_dir.path().join("out");
    let added = api("POST", "/api/v1/downloads", &json!({ "identifiers": [tor], "out_dir": out }));
    let id = added["id"].as_str().expect("id").to_string();
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(120), || {
            last = api("GET", &format!("/api/v1/downloads/{id}"), &Value::Null);
            last["state"] == "completed"
        }),
        "not completed: {last}\n{}",
        daemon.log_text()
    );
    assert_eq!(sha256_file(&out.join("daemon-paid.bin")), f.sha);
    let want = wei(3 * MIB);
    assert!(
        wait_until(Duration::from_secs(60), || chain.balance(&payee) == want),
        "the seeder has {} wei, not {want}: {}",
        chain.balance(&payee),
        daemon.log_text()
    );
    let paid = |v: &Value| {
        v["payments"].as_array().and_then(|a| a.iter().find(|e| e["wallet"] == payee)).map(|e| e["paid_wei"].clone())
    };
    let mut report = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            report = api("GET", "/api/v1/payments", &Value::Null);
            paid(&report) == Some(json!(want.to_string()))
        }),
        "the API does not show the payment: {report}"
    );
}

/// `[payments] fast_lane = "paid"` on the seeder: a Chiral downloader that does not pay
/// (its wallet stays locked) is judged behind once it owes more than two thresholds, and its
/// next connection gets no fast lane; once it has paid, the fast lane is back.
#[test]
fn the_fast_lane_is_kept_for_peers_that_pay() {
    let Pair { chain: _chain, tracker, dl, sd, payer: _, payee } = pair(PRICE);
    let conf = sd.data_dir.path().join("config/chiral/config.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}fast_lane = \"paid\"\n")).unwrap();
    // Two contents, each served by its own `chiral seed` (one ledger, in the seeder's data dir).
    let mut seeds = Vec::new();
    for (name, tag) in [("lane-a.bin", 64), ("lane-b.bin", 65)] {
        let f = fixture(name, 8 * MIB, tag);
        let tor = f.dir.path().join(format!("{name}.torrent"));
        mktorrent(&f.file, &tor, &tracker.url(), 18, true);
        let args = [f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url(), "-v"];
        let (p, _) = start_seed(&sd, &args, 1);
        let ih = info_hash_of(&tor);
        assert!(wait_until(Duration::from_secs(30), || !tracker.ports(&ih).is_empty()), "the seed never announced");
        seeds.push((p, f, tor));
    }
    let log = || seeds.iter().map(|(p, ..)| p.log_text()).collect::<Vec<_>>().join("\n");
    let lanes = |with: &str| log().lines().filter(|l| l.contains("proven;") && l.contains(with)).count();
    let get = |tor: &Path, out: &str, pass: bool| {
        let mut c = dl.cmd();
        if pass {
            c.env("CHIRAL_WALLET_PASSPHRASE", PASS);
        }
        c.args(["get", tor.to_str().unwrap(), "-o", dl.data_dir.path().join(out).to_str().unwrap(), "-q"]);
        let o = run_with_timeout(&mut c, Duration::from_secs(120));
        assert!(o.status.success(), "get: {}", stderr(&o));
    };
    // Without the passphrase the downloader cannot pay: its debt stays owed.
    get(&seeds[0].2, "one", false);
    assert_eq!(lanes("; fast lane)"), 1, "a Chiral peer with a wallet starts with the fast lane:\n{}", log());
    // (Listing the ledger, passphrase at hand, pays nothing.)
    let (debt, paid, _, v) = ledger(&dl, &payee);
    assert_eq!((debt, paid), (wei(8 * MIB), 0), "the debt is kept: {v}");
    assert!(
        wait_until(Duration::from_secs(40), || log().matches("1 wallet(s) behind on payment").count() == 2),
        "the seeders never judged the downloader behind:\n{}",
        log()
    );
    get(&seeds[1].2, "two", false);
    assert_eq!(lanes("no fast lane"), 1, "the debtor got the fast lane again:\n{}", log());
    // It pays both contents' worth, and the seeders see it on the chain.
    ok(&dl, &["payments", "settle"]);
    assert_eq!(ledger(&dl, &payee).1, wei(16 * MIB));
    assert!(
        wait_until(Duration::from_secs(40), || log().matches("0 wallet(s) behind on payment").count() == 2),
        "the seeders never saw the payment:\n{}",
        log()
    );
    get(&seeds[0].2, "three", true);
    assert_eq!(lanes("; fast lane)"), 2, "the fast lane is not back after paying:\n{}", log());
}

#[test]
fn a_crash_at_any_ledger_state_never_pays_twice() {
    // Paid only at the end of each download (the threshold is never reached).
    let Pair { chain, tracker, dl, sd, payer, payee } = pair(1000 * PRICE);
    let mut total = 0;
    for (i, crash) in ["signed", "sent"].into_iter().enumerate() {
        let (s, f, tor) = seed(&sd, &tracker, &format!("crash-{crash}.bin"), 2, 70 + i as u64);
        let out = dl.data_dir.path().join(format!("out-{crash}"));
        // The process aborts right after the transaction reached `crash` in the ledger.
        let o = get(&dl, &tor, &out, &[("CHIRAL_PAYMENTS_CRASH", crash)]);
        assert!(!o.status.success() && stderr(&o).contains("test hook"), "{crash}: {}", stderr(&o));
        assert_eq!(sha256_file(&out.join(format!("crash-{crash}.bin"))), f.sha);
        drop(s);
        total += wei(2 * MIB);
        // A new process finishes the payment: the same transaction, never a second one.
        ok(&dl, &["payments", "settle"]);
        assert_eq!(chain.balance(&payee), total, "after a crash at {crash}");
        let (owed, paid, ntx, v) = ledger(&dl, &payee);
        assert_eq!((owed, paid, ntx as u128), (0, total, chain.sent(&payer)), "after a crash at {crash}: {v}");
    }
    assert_eq!(chain.sent(&payer), 2);
}

#[test]
fn a_malformed_peer_wallet_is_refused_and_never_paid() {
    let chain = Anvil::start();
    let tracker = Tracker::start();
    let dl = node(&chain.url(), PRICE, "");
    let sd = node(&chain.url(), PRICE, "[plugins.bittorrent]\nwallet = \"0x12345-not-a-wallet\\u001b[31m\"\n");
    let key = dl.data_dir.path().join("key");
    std::fs::write(&key, &chain.key).unwrap();
    ok(&dl, &["wallet", "import", "--private-key-file", key.to_str().unwrap()]);
    let payer = address(&dl);
    let (_seed, f, tor) = seed(&sd, &tracker, "bad-wallet.bin", 2, 81);
    let out = dl.data_dir.path().join("out");
    let o = get(&dl, &tor, &out, &[]);
    assert!(o.status.success(), "get: {}", stderr(&o));
    assert_eq!(sha256_file(&out.join("bad-wallet.bin")), f.sha);
    let err = stderr(&o);
    assert!(err.contains("refused the malformed wallet"), "{err}");
    assert!(!err.contains('\u{1b}'), "the peer's text is not sent to the terminal as is: {err:?}");
    let v = json_of(&ok(&dl, &["payments", "--json"]));
    assert_eq!(v["payments"], json!([]), "nothing owed or paid: {v}");
    assert_eq!(chain.sent(&payer), 0);
}

#[test]
fn with_the_chain_down_the_debt_is_kept_and_settled_later() {
    let Pair { chain, tracker, dl, sd, payer, payee } = pair(PRICE);
    // The chain is down for the downloader: nothing answers at its rpc.
    write_config(&dl, &format!("http://127.0.0.1:{}", free_port()), PRICE, "");
    let (_seed, f, tor) = seed(&sd, &tracker, "down.bin", 3, 91);
    let out = dl.data_dir.path().join("out");
    let o = get(&dl, &tor, &out, &[]);
    assert!(o.status.success(), "the download completes with the chain down: {}", stderr(&o));
    assert_eq!(sha256_file(&out.join("down.bin")), f.sha);
    let want = wei(3 * MIB);
    let (owed, paid, _, v) = ledger(&dl, &payee);
    assert_eq!((owed, paid), (want, 0), "owed while the chain is down: {v}");
    // The chain is back (the config now names it): settle pays it once.
    write_config(&dl, &chain.url(), PRICE, "");
    ok(&dl, &["payments", "settle"]);
    ok(&dl, &["payments", "settle"]);
    assert_eq!(chain.balance(&payee), want);
    let (owed, paid, ntx, v) = ledger(&dl, &payee);
    assert_eq!((owed, paid, ntx as u128), (0, want, chain.sent(&payer)), "{v}");

    // The daemon's API shows the same ledger.
    let (daemon, rx) = spawn_printing(&dl, "daemon", &["--http", "127.0.0.1:0"]);
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{}", daemon.log_text()));
    let rest = line.strip_prefix("http://127.0.0.1:").unwrap_or_else(|| panic!("first line {line:?}"));
    let (port, token) = rest.split_once("/#token=").unwrap();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let api = http(port.parse().unwrap(), "GET", "/api/v1/payments", &auth, "").expect("GET /api/v1/payments");
    assert_eq!(serde_json::from_str::<Value>(&api).unwrap(), v, "the API and `chiral payments --json` agree");
}

/// With a proxy set, the JSON-RPC to the chain goes through it and never around it: a dead
/// proxy makes the chain unreachable even though it listens on loopback; through microsocks
/// the balance is read.
#[test]
fn the_chain_is_reached_through_the_proxy_and_never_around_it() {
    let chain = Anvil::start();
    let n = node(&chain.url(), PRICE, "");
    let key = n.data_dir.path().join("key");
    std::fs::write(&key, format!("{}\n", chain.key)).unwrap();
    ok(&n, &["wallet", "import", "--private-key-file", key.to_str().unwrap()]);
    let direct = json_of(&ok(&n, &["wallet", "balance", "--json"]));
    assert_ne!(direct["balance_wei"], json!("0"), "{direct}");

    let dead = format!("socks5h://127.0.0.1:{}", free_port());
    let o = run(&n, &["--proxy", &dead, "wallet", "balance", "--json"]);
    assert!(!o.status.success(), "the chain was reached around a dead proxy: {}", stdout(&o));
    assert!(last_error_line(&o).contains("chain unreachable"), "{}", last_error_line(&o));

    let (_socks, port) = microsocks();
    let via = json_of(&ok(&n, &["--proxy", &format!("socks5h://127.0.0.1:{port}"), "wallet", "balance", "--json"]));
    assert_eq!(via, direct, "the balance read through the proxy");
}

#[test]
fn wallets_are_encrypted_and_never_replaced() {
    let n = Chiral::new();
    let key = n.data_dir.path().join("key");
    let hex_key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    std::fs::write(&key, hex_key).unwrap();
    ok(&n, &["wallet", "import", "--private-key-file", key.to_str().unwrap()]);
    assert_eq!(address(&n), "0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
    let ks = std::fs::read_to_string(n.data_dir.path().join("wallet.json")).unwrap();
    assert!(!ks.contains(&hex_key[2..]), "encrypted");
    let o = run(&n, &["wallet", "new"]);
    assert!(!o.status.success(), "never replaced");
    // No passphrase and no terminal: refused, nothing made.
    let m = Chiral::new();
    let o = run_with_timeout(
        m.cmd().args(["wallet", "new"]).env_remove("CHIRAL_WALLET_PASSPHRASE"),
        Duration::from_secs(60),
    );
    assert!(!o.status.success() && stderr(&o).contains("CHIRAL_WALLET_PASSPHRASE"), "{}", stderr(&o));
    assert!(!m.data_dir.path().join("wallet.json").exists());
}

/// `chiral node` (the bootstrap of a small Chiral network) and its address.
fn chiral_network_node(n: &Chiral) -> (Proc, String) {
    let (proc, rx) = spawn_printing(n, "node", &[]);
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("/ip4/") && l.contains("/p2p/") => return (proc, l.trim().to_string()),
            Ok(_) => {}
            Err(_) => panic!("chiral node printed no address; stderr:\n{}", proc.log_text()),
        }
    }
}

#[test]
fn a_chiral_network_download_pays_its_provider_to_the_wei() {
    // The provider's wallet travels in its signed records; the downloader owes it for each
    // verified chunk it delivered and pays at 2 MiB owed and at the end.
    let chain = Anvil::start();
    let (dl, sd) = (node(&chain.url(), 2 * PRICE, ""), node(&chain.url(), 2 * PRICE, ""));
    let (payer, payee) = wallets(&chain, &dl, &sd);
    let boot = Chiral::new();
    let (_boot, addr) = chiral_network_node(&boot);
    let f = fixture("net-paid.bin", 6 * MIB, 71);
    let (_seed, lines) = start_seed(&sd, &[f.file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr], 1);
    let cid = lines.iter().find(|l| l.starts_with("chiral:")).expect("a chiral: id").trim().to_string();
    let out = dl.data_dir.path().join("out");
    let o = run_with_timeout(
        dl.cmd().env("CHIRAL_WALLET_PASSPHRASE", PASS).args([
            "get",
            &cid,
            "--bootstrap",
            &addr,
            "-o",
            out.to_str().unwrap(),
            "--json",
            "-q",
        ]),
        Duration::from_secs(240),
    );
    assert!(o.status.success(), "get {cid}: {}", stderr(&o));
    assert_eq!(sha256_file(&out.join("net-paid.bin")), f.sha);
    let want = wei(6 * MIB);
    let (owed, paid, ntx, v) = ledger(&dl, &payee);
    assert_eq!((owed, paid), (0, want), "the provider is paid for the 6 MiB it delivered: {v}");
    assert!(ntx >= 2, "paid at the threshold and at the end: {v}");
    assert_eq!(chain.balance(&payee), want, "the chain agrees");
    assert_eq!(chain.sent(&payer), ntx as u128);
}
