//! `chiral stop TARGET`: stop the running seeds TARGET names, in whichever process serves them.

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
