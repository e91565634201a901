//! `chiral`: a thin command line over the host library.

mod cli;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _, Result};
use chiral_host::{
    config::{default_data_dir, ConfigFile},
    control::ControlSocket,
    lifecycle::{self, ServedSeeds},
    registry::{search_dirs, Registry, Status},
    seedbook::{SeedBook, SeedState},
    session::{log_event, GetReport, GetRequest, SeedLine},
    Host,
};
use chiral_sdk::HostConfig;
use clap::Parser as _;
use cli::{
    args::{
        Cli, Command, CreateArgs, DemoArgs, GetArgs, Global, NodeArgs, PluginsArgs, SearchArgs, SeedArgs, SeedsArgs,
        TargetArgs,
    },
    progress::ProgressUi,
};
use indicatif::HumanBytes;
use serde_json::json;

const DEFAULT_CONNECTIONS: u32 = 8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let json = matches!(
        &cli.command,
        Command::Get(GetArgs { json: true, .. })
            | Command::Demo(DemoArgs { json: true, .. })
            | Command::Create(CreateArgs { json: true, .. })
            | Command::Seed(SeedArgs { json: true, .. })
            | Command::Seeds(SeedsArgs { json: true })
            | Command::Stop(TargetArgs { json: true, .. })
            | Command::Remove(TargetArgs { json: true, .. })
    );
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chiral: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line on stderr; with --json, the same on stdout for scripts.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("chiral: {msg}");
            if json {
                println!("{}", json!({ "ok": false, "error": msg }));
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Plugins(a) => cmd_plugins(&cli.global, a),
        Command::Get(a) => cmd_get(&cli.global, a).await,
        Command::Seed(a) => cmd_seed(&cli.global, a).await,
        Command::Seeds(a) => cmd_seeds(&cli.global, a).await,
        Command::Stop(a) => cmd_stop(&cli.global, a).await,
        Command::Remove(a) => cmd_remove(&cli.global, a).await,
        Command::Create(a) => cmd_create(&cli.global, a).await,
        Command::Node(a) => cmd_node(&cli.global, a).await,
        Command::Search(a) => cmd_search(&cli.global, a).await,
        Command::Demo(a) => cmd_demo(&cli.global, a).await,
    }
}

/// Settings from flags, environment and the config file.
struct Settings {
    config: ConfigFile,
    data_dir: PathBuf,
    connections: u32,
}

fn settings(g: &Global) -> Result<Settings> {
    let config = match &g.config {
        Some(p) => ConfigFile::load(p).map_err(|e| anyhow!(e))?,
        None => match ConfigFile::default_path().filter(|p| p.is_file()) {
            Some(p) => ConfigFile::load(&p).map_err(|e| anyhow!(e))?,
            None => ConfigFile::default(),
        },
    };
    let data_dir = g.data_dir.clone().or_else(|| config.data_dir.clone()).unwrap_or_else(default_data_dir);
    let connections = config.connections.unwrap_or(DEFAULT_CONNECTIONS);
    Ok(Settings { config, data_dir, connections })
}

fn build_host(g: &Global, s: &Settings, loopback: bool) -> Result<Host> {
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("data dir {}", s.data_dir.display()))?;
    let c = &s.config;
    let listen = if loopback {
        "127.0.0.1".to_string()
    } else {
        g.listen.clone().or_else(|| c.listen.clone()).unwrap_or_else(|| "0.0.0.0".into())
    };
    let mut bootstrap = g.bootstrap.clone();
    bootstrap.extend(c.bootstrap.iter().cloned());
    let host_config = HostConfig {
        data_dir: s.data_dir.to_string_lossy().into_owned().into(),
        listen_addr: listen.into(),
        listen_port: g.port.or(c.port).unwrap_or(0),
        advertise_host: g.advertise.clone().or_else(|| c.advertise.clone()).unwrap_or_default().into(),
        connections: s.connections,
        proxy: c.proxy.clone().map(Into::into).into(),
        bootstrap: bootstrap.into_iter().map(Into::into).collect(),
        // The demo stays on loopback: no public DHT.
        no_dht: loopback || g.no_dht || c.no_dht.unwrap_or(false),
        options: Default::default(),
    };
    let mut explicit = g.plugin_path.clone();
    explicit.extend(c.plugin_path.iter().cloned());
    let env = std::env::var("CHIRAL_PLUGIN_PATH").ok();
    let exe = std::env::current_exe().ok();
    let dirs = search_dirs(&explicit, env.as_deref(), exe.as_deref(), &s.data_dir);
    let plugin_options: BTreeMap<String, Vec<(String, String)>> =
        c.plugins.keys().map(|k| (k.clone(), c.plugin_options(k))).collect();
    let registry =
        Registry::discover(&dirs, host_config, c.backend.clone(), plugin_options, Arc::new(|p, e| log_event(p, &e)));
    Ok(Host::new(registry))
}

fn cmd_plugins(g: &Global, a: PluginsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let reg = &host.registry;
    let rows: Vec<serde_json::Value> = reg
        .entries()
        .iter()
        .map(|e| {
            let d = e.descriptor.as_ref();
            let (status, reason) = match &e.status {
                Status::Loaded => ("loaded", None),
                Status::Skipped(r) => ("skipped", Some(r.clone())),
            };
            json!({
                "name": d.map(|d| d.name.to_string()),
                "version": d.map(|d| d.version.to_string()),
                "sdk_version": e.sdk_version,
                "schemes": d.map(|d| d.schemes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "suffixes": d.map(|d| d.suffixes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "capabilities": d.map(|d| Registry::capability_names(d.capabilities)).unwrap_or_default(),
                "priority": d.map(|d| d.priority),
                "description": d.map(|d| d.description.to_string()),
                "file": e.path.display().to_string(),
                "status": status,
                "reason": reason,
            })
        })
        .collect();
    let winners = reg.scheme_winners();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "plugins": rows, "schemes": winners }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no plugin files found; searched the --plugin-path, CHIRAL_PLUGIN_PATH, the executable's folder and <data dir>/plugins")?;
    }
    writeln!(out, "{:<12} {:<8} {:<6} {:<22} {:<8} FILE", "NAME", "VERSION", "SDK", "SCHEMES", "STATUS")?;
    for r in &rows {
        let mut claims: Vec<String> =
            r["schemes"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(str::to_string).collect();
        claims
            .extend(r["suffixes"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(|s| format!("*{s}")));
        writeln!(
            out,
            "{:<12} {:<8} {:<6} {:<22} {:<8} {}",
            r["name"].as_str().unwrap_or("-"),
            r["version"].as_str().unwrap_or("-"),
            r["sdk_version"].as_str().unwrap_or("-"),
            if claims.is_empty() { "-".to_string() } else { claims.join(",") },
            r["status"].as_str().unwrap_or("-"),
            r["file"].as_str().unwrap_or("-"),
        )?;
        if let Some(reason) = r["reason"].as_str() {
            writeln!(out, "  skipped: {reason}")?;
        }
    }
    if !winners.is_empty() {
        writeln!(out)?;
        for (scheme, plugin) in &winners {
            writeln!(out, "{scheme:<12} -> {plugin}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_sha256(hex_str: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_str.trim()).map_err(|_| anyhow!("--sha256 must be 64 hex digits"))?;
    bytes.try_into().map_err(|_| anyhow!("--sha256 must be 64 hex digits"))
}

/// Resolves after SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn download(host: &Host, req: GetRequest, quiet: bool) -> Result<Option<GetReport>> {
    let ui = Arc::new(ProgressUi::new(quiet));
    let cb = ui.clone();
    let result = tokio::select! {
        r = host.get(&req, Arc::new(move |e| cb.on_event(e))) => Some(r),
        _ = shutdown_signal() => None,
    };
    ui.finish();
    match result {
        None => Ok(None),
        Some(r) => Ok(Some(r?)),
    }
}

fn summary_line(r: &GetReport) -> String {
    let fresh = r.bytes.saturating_sub(r.resumed_bytes);
    let rate = if r.seconds > 0.0 { fresh as f64 / r.seconds } else { 0.0 };
    let from: Vec<String> =
        r.sources.iter().filter(|s| s.bytes > 0).map(|s| format!("{} {}", s.label, HumanBytes(s.bytes))).collect();
    let mut line =
        format!("done: {} ({}) in {:.2} s, {}/s", r.name, HumanBytes(r.bytes), r.seconds, HumanBytes(rate as u64));
    if r.resumed_bytes > 0 {
        line.push_str(&format!(", {} resumed", HumanBytes(r.resumed_bytes)));
    }
    if !from.is_empty() {
        line.push_str(&format!("; from {}", from.join(", ")));
    }
    if r.sha256.is_some() {
        line.push_str("; sha256 ok");
    } else if r.verified {
        line.push_str("; every piece verified");
    } else {
        line.push_str("; unverified (no hashes and no --sha256)");
    }
    chiral_sdk::text::line(&line)
}

async fn cmd_get(g: &Global, a: GetArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let sha256 = a.sha256.as_deref().map(parse_sha256).transpose()?;
    let host = Arc::new(build_host(g, &s, false)?);
    let req = GetRequest {
        identifiers: a.ids.clone(),
        out_dir: a.out_dir.clone(),
        backend: a.backend.clone(),
        connections: a.connections.unwrap_or(s.connections),
        sha256,
    };
    let Some(report) = download(&host, req, g.quiet || a.json).await? else {
        eprintln!("chiral: interrupted; run the same command again to resume");
        return Ok(ExitCode::from(130));
    };
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "download": report }))?);
    } else {
        for f in &report.files {
            println!("{}", f.display());
        }
    }
    if !g.quiet {
        eprintln!("{}", summary_line(&report));
    }
    if a.seed {
        let via: Vec<String> = report
            .sources
            .iter()
            .map(|s| s.plugin.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let Some(path) = report.files.first() else { return Ok(ExitCode::SUCCESS) };
        let seeds = host.seed(path, &via, &[]).await?;
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).to_string_lossy().into_owned();
        serve(host, &s.data_dir, vec![Served { path, via, options: Vec::new(), lines: seeds }], false).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Seeds started for one path, as asked.
struct Served {
    path: String,
    via: Vec<String>,
    options: Vec<(String, String)>,
    lines: Vec<SeedLine>,
}

/// Remembers the seeds in the seed list, prints their identifiers and serves until
/// SIGINT/SIGTERM, or until `chiral stop` stops the last of them through the control socket.
async fn serve(host: Arc<Host>, data_dir: &Path, served: Vec<Served>, json: bool) {
    let control = Arc::new(ServedSeeds::new(host, data_dir));
    // Bound before anything is printed: once a script sees an identifier, `chiral stop` works.
    let socket = match ControlSocket::bind(data_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("control socket: {e}; `chiral seeds` and `chiral stop` will not see this process");
            None
        }
    };
    for s in &served {
        control.record(&s.path, &s.via, &s.options, &s.lines);
    }
    let seeds: Vec<&SeedLine> = served.iter().flat_map(|s| &s.lines).collect();
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", json!({ "ok": true, "seeds": seeds }));
    } else {
        for s in &seeds {
            for id in &s.identifiers {
                let _ = writeln!(out, "{}", shown(id));
            }
        }
    }
    let _ = out.flush();
    drop(out);
    for s in &seeds {
        eprintln!("seeding {} through {} (Ctrl-C or `chiral stop` to stop)", shown(&s.path), s.plugin);
    }
    let stopped_remotely = async {
        match &socket {
            Some(sock) => sock.serve(control.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = stopped_remotely => eprintln!("every seed was stopped; exiting"),
    }
    // The socket goes first, so that nobody waits on a process that no longer answers.
    drop(socket);
    control.finish();
}

async fn cmd_seed(g: &Global, a: SeedArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let Some(path) = a.path.as_deref().filter(|_| !a.all) else { return seed_all(g, &s, a.json).await };
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() && !meta.is_dir() {
        bail!("{} is neither a file nor a folder", path.display());
    }
    let canonical = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let host = Arc::new(build_host(g, &s, false)?);
    let mut opts: Vec<(String, String)> = a.tracker.iter().map(|t| ("tracker".to_string(), t.clone())).collect();
    opts.extend(a.options.iter().cloned());
    let seeds = host.seed(&canonical, &a.via, &opts).await?;
    let served =
        Served { path: canonical.to_string_lossy().into_owned(), via: a.via.clone(), options: opts, lines: seeds };
    serve(host, &s.data_dir, vec![served], a.json).await;
    Ok(ExitCode::SUCCESS)
}

/// `chiral seed --all`: every remembered seed that is not running, served again in this process.
async fn seed_all(g: &Global, s: &Settings, json: bool) -> Result<ExitCode> {
    let probe = lifecycle::probe(&s.data_dir).await;
    let records = SeedBook::new(&s.data_dir).load();
    if records.is_empty() {
        bail!("no remembered seed; start one with `chiral seed PATH`");
    }
    let idle: Vec<_> = records
        .into_iter()
        .filter(|r| !(r.state == SeedState::Running && r.pid.is_some_and(|p| probe.running(p))))
        .collect();
    if idle.is_empty() {
        bail!("every remembered seed is already running");
    }
    let host = Arc::new(build_host(g, s, false)?);
    let mut served = Vec::new();
    let mut errors = Vec::new();
    for r in idle {
        match host.seed(Path::new(&r.path), &r.via, &r.options).await {
            Ok(lines) => served.push(Served { path: r.path, via: r.via, options: r.options, lines }),
            Err(e) => errors.push(format!("{}: {e}", r.path)),
        }
    }
    if served.is_empty() {
        bail!("no remembered seed could be served again: {}", errors.join("; "));
    }
    for e in errors {
        tracing::warn!("not served again: {e}");
    }
    serve(host, &s.data_dir, served, json).await;
    Ok(ExitCode::SUCCESS)
}

async fn cmd_seeds(g: &Global, a: SeedsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let rows = lifecycle::list(&s.data_dir).await;
    if a.json {
        println!("{}", json!({ "ok": true, "seeds": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for r in &rows {
        let state = match r.state {
            SeedState::Running => "running",
            SeedState::Stopped => "stopped",
        };
        let served = r.bytes_served.map_or_else(|| "-".to_string(), |b| HumanBytes(b).to_string());
        writeln!(out, "{state}\t{}\t{}\t{}\t{served}", r.plugin, shown(&r.path), shown(&r.identifiers.join(" ")))?;
    }
    if rows.is_empty() && !g.quiet {
        eprintln!("no seeds; start one with `chiral seed PATH`");
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_stop(g: &Global, a: TargetArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let out = lifecycle::stop(&s.data_dir, &a.target).await;
    if out.stopped.is_empty() {
        let why = if out.errors.is_empty() { String::new() } else { format!(" ({})", out.errors.join("; ")) };
        bail!("no running seed matches {}{why}", a.target);
    }
    for e in &out.errors {
        tracing::warn!("{e}");
    }
    if a.json {
        println!("{}", json!({ "ok": true, "stopped": out.stopped, "exited": out.exited }));
    } else {
        for s in &out.stopped {
            println!("stopped\t{}\t{}\t{}", s.plugin, shown(&s.path), shown(&s.identifiers.join(" ")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_remove(g: &Global, a: TargetArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let out = lifecycle::remove(&s.data_dir, &a.target).await;
    if out.removed.is_empty() && out.stop.stopped.is_empty() {
        let why = if out.stop.errors.is_empty() { String::new() } else { format!(" ({})", out.stop.errors.join("; ")) };
        bail!("no seed matches {}{why}", a.target);
    }
    for e in &out.stop.errors {
        tracing::warn!("{e}");
    }
    if a.json {
        println!("{}", json!({ "ok": true, "stopped": out.stop.stopped, "removed": out.removed }));
    } else {
        for s in &out.stop.stopped {
            println!("stopped\t{}\t{}\t{}", s.plugin, shown(&s.path), shown(&s.identifiers.join(" ")));
        }
        for r in &out.removed {
            println!("removed\t{}", shown(&r.path));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_create(g: &Global, a: CreateArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let path = std::fs::canonicalize(&a.path).with_context(|| format!("{}", a.path.display()))?;
    let mut args = vec![
        ("path".to_string(), path.to_string_lossy().into_owned()),
        ("output".to_string(), a.output.to_string_lossy().into_owned()),
        ("private".to_string(), a.private.to_string()),
    ];
    args.extend(a.tracker.iter().map(|t| ("tracker".to_string(), t.clone())));
    args.extend(a.web_seed.iter().map(|w| ("web_seed".to_string(), w.clone())));
    if let Some(p) = a.piece_size {
        args.push(("piece_size".to_string(), p.to_string()));
    }
    let answer = host.command(a.via.as_deref(), "x.torrent", "create", &args).await?;
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "created": answer }))?);
    } else if let Some(m) = answer.get("magnet").and_then(|m| m.as_str()) {
        println!("{m}");
    }
    if !g.quiet {
        eprintln!("wrote {}", a.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_node(g: &Global, a: NodeArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let answer = host.command(Some(&a.via), "", "node", &[]).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", json!({ "ok": true, "node": answer }))?;
    } else {
        for addr in answer.get("addrs").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(addr) = addr.as_str() {
                writeln!(out, "{addr}")?;
            }
        }
    }
    out.flush()?;
    drop(out);
    if let Some(id) = answer.get("peer_id").and_then(|v| v.as_str()) {
        eprintln!("node {id} running (Ctrl-C to stop)");
    }
    shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}

async fn cmd_search(g: &Global, a: SearchArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let answer = host.command(Some(&a.via), "", "search", &[("word".to_string(), a.word.clone())]).await?;
    if a.json {
        println!("{}", json!({ "ok": true, "search": answer }));
        return Ok(ExitCode::SUCCESS);
    }
    let results = answer.get("results").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    for r in &results {
        let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("?");
        let name = r.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let size = r.get("size").and_then(|v| v.as_u64()).map(|n| HumanBytes(n).to_string()).unwrap_or_default();
        // Ids and names come from the network: shown, never obeyed (escapes, tabs, new lines).
        println!("{}\t{}\t{size}", chiral_sdk::text::line(id), chiral_sdk::text::line(name));
    }
    if results.is_empty() && !g.quiet {
        eprintln!("no content found for {:?}", a.word);
    }
    Ok(ExitCode::SUCCESS)
}

/// Fills `path` with `size` bytes of fast pseudo-random data (xorshift; content only needs to
/// be incompressible and reproducible, not secret).
fn generate(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

async fn cmd_demo(g: &Global, a: DemoArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, true)?;
    let dir = s.data_dir.join("demo");
    let src_dir = dir.join("seed");
    let out_dir = dir.join("download");
    std::fs::create_dir_all(&src_dir)?;
    let _ = std::fs::remove_dir_all(&out_dir);
    let file = src_dir.join(format!("chiral-demo-{}M.bin", a.size));
    let size = a.size << 20;
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(size) {
        eprintln!("generating {} of test data in {}", HumanBytes(size), file.display());
        generate(&file, size)?;
    }
    let want = chiral_host::session::sha256_file(&file)?;
    let seeds = host.seed(&file, &[], &[]).await?;
    let mut ids = Vec::new();
    for s in &seeds {
        for id in &s.identifiers {
            eprintln!("seeding through {:<10} {}", s.plugin, shown(id));
            ids.push(id.clone());
        }
    }
    let req = GetRequest {
        identifiers: ids,
        out_dir: out_dir.clone(),
        backend: None,
        connections: s.connections,
        sha256: Some(want),
    };
    let report = download(&host, req, g.quiet || a.json).await?;
    for s in &seeds {
        let _ = host.stop_seed(&s.plugin, &s.id);
    }
    let Some(report) = report else {
        eprintln!("chiral: interrupted");
        return Ok(ExitCode::from(130));
    };
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "download": report }))?);
    } else {
        println!("{}", summary_line(&report));
        for src in &report.sources {
            println!("  {:<10} {:<50} {:>10}", src.plugin, src.label, HumanBytes(src.bytes).to_string());
        }
        println!("verified: sha256 {} matches the seeded file", hex::encode(want));
    }
    Ok(ExitCode::SUCCESS)
}

/// A path or identifier as printed for people: control characters (escapes, new lines, tabs)
/// shown escaped, so a file name cannot drive the terminal or forge a line or a column.
fn shown(s: &str) -> String {
    chiral_sdk::text::for_terminal(s, 4096)
}
