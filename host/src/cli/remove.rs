//! `chiral remove TARGET`: stop TARGET if it runs and forget it; the files stay.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chiral_host::lifecycle;
use serde_json::json;

use super::{
    args::{Global, TargetArgs},
    setup::settings,
    shown,
};

pub(crate) async fn run(g: &Global, a: TargetArgs) -> Result<ExitCode> {
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
