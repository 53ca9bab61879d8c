//! `refund-worker receipts verify|export|public-key`: the sealed receipt chain, for finance
//! and auditors. Reads only: nothing here writes to the chain.
//!
//! An auditor needs no access to Redis or to the signing key: `export` writes the chain as
//! JSON Lines, `public-key` prints the key that verifies it, and `verify --file F
//! --public-key HEX` checks the file offline. `verify` and `export` print the head (last
//! position and hash): a file cut short still verifies on its own, so keep the head you were
//! given and compare.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use super::{CommandError, Context, runtime};
use crate::{
    cli::{ReceiptsArgs, ReceiptsCommand},
    governance::receipt::{ChainReport, entries_from_lines, verify_chain},
    signing::{KeyPair, PublicKey},
    store::{self, ReceiptChain},
};

/// Runs a `receipts` subcommand.
pub async fn run(ctx: &Context, args: ReceiptsArgs) -> Result<(), CommandError> {
    match args.command {
        ReceiptsCommand::PublicKey => {
            println!("{}", signing_key(ctx)?.public_hex());
            Ok(())
        }
        ReceiptsCommand::Verify {
            file,
            public_key,
            head,
            count,
            json,
        } => {
            let expected = Expected { head, count };
            let (report, found) = match file {
                Some(path) => {
                    // clap requires --public-key with --file.
                    let key = public_key_arg(public_key.as_deref().unwrap_or_default())?;
                    verify_file(&path, &key)?
                }
                None => {
                    let chain = open(ctx).await?;
                    let report = match public_key {
                        Some(hex) => chain.verify_with(&public_key_arg(&hex)?).await,
                        None => chain.verify().await,
                    }
                    .map_err(runtime)?;
                    (report, chain.head().await.map_err(runtime)?)
                }
            };
            conclude(&report, found.as_ref(), &expected, json)
        }
        ReceiptsCommand::Export { out } => export(&open(ctx).await?, out.as_deref()).await,
    }
}

/// The configured signing key.
fn signing_key(ctx: &Context) -> Result<KeyPair, CommandError> {
    KeyPair::from_seed(&ctx.settings.receipts.signing_key, "[receipts] signing_key")
        .map_err(|e| CommandError::Usage(e.to_string()))
}

fn public_key_arg(hex: &str) -> Result<PublicKey, CommandError> {
    PublicKey::from_hex(hex).ok_or_else(|| {
        CommandError::Usage(format!(
            "--public-key must be an Ed25519 public key in hex (64 hex digits, from `receipts public-key`), got {hex:?}"
        ))
    })
}

async fn open(ctx: &Context) -> Result<ReceiptChain, CommandError> {
    let key = signing_key(ctx)?;
    let conn = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    Ok(ReceiptChain::new(conn, &ctx.connections.prefix, key))
}

fn verify_file(
    path: &Path,
    key: &PublicKey,
) -> Result<(ChainReport, Option<(u64, String)>), CommandError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", path.display())))?;
    // A byte that is not UTF-8 becomes U+FFFD, so its receipt no longer matches: reported.
    let entries = entries_from_lines(&String::from_utf8_lossy(&bytes));
    let report = verify_chain(&entries, None, key);
    let head = entries.last().and_then(|(seq, text)| {
        let hash = crate::governance::receipt::Receipt::parse(text).ok()?.hash;
        Some((*seq, hash))
    });
    Ok((report, head))
}

/// What the verifier was told to expect (`--head`, `--count`).
struct Expected {
    head: Option<String>,
    count: Option<u64>,
}

impl Expected {
    /// Where the chain found differs from what was expected.
    fn mismatches(&self, head: Option<&(u64, String)>) -> Vec<String> {
        let (seq, hash) = head.map_or((0, "(none: the chain is empty)"), |(s, h)| (*s, h.as_str()));
        let mut found = Vec::new();
        if let Some(want) = &self.head
            && !want.eq_ignore_ascii_case(hash)
        {
            found.push(format!(
                "the chain ends at receipt {seq} with hash {hash}, not at the expected head {want}: receipts were cut off, added or replaced"
            ));
        }
        if let Some(want) = self.count
            && want != seq
        {
            found.push(format!(
                "the chain holds {seq} receipts, not the expected {want}"
            ));
        }
        found
    }
}

/// Prints the verdict: exit 0 on an intact chain that ends where expected, else every problem
/// and exit 1.
fn conclude(
    report: &ChainReport,
    head: Option<&(u64, String)>,
    expected: &Expected,
    json: bool,
) -> Result<(), CommandError> {
    let mut problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    problems.extend(expected.mismatches(head));
    if json {
        let out = serde_json::json!({
            "intact": problems.is_empty(),
            "checked": report.checked,
            "formats": {
                "signed_individually": report.signed_individually,
                "signed_per_group": report.signed_per_group,
            },
            "head": head.map(|(seq, hash)| serde_json::json!({ "seq": seq, "hash": hash })),
            "expected": { "head": expected.head, "count": expected.count },
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if problems.is_empty() {
        println!("{} receipts verified, chain intact", report.checked);
        println!(
            "formats: {} signed one by one (format 1), {} signed per group (format 2, one signature over a Merkle root)",
            report.signed_individually, report.signed_per_group
        );
        if let Some((seq, hash)) = head {
            println!("head: receipt {seq}, hash {hash}");
        }
        if expected.head.is_some() || expected.count.is_some() {
            println!("the chain ends where expected");
        }
    } else {
        for problem in &problems {
            println!("{problem}");
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CommandError::Runtime(format!(
        "the receipt chain is NOT intact or not the one expected: {} problem(s) in {} receipts (listed above)",
        problems.len(),
        report.checked
    )))
}

/// Writes every stored receipt, as stored, one per line in position order. A file is written
/// beside its destination and renamed into place when complete, so an export that fails
/// halfway never looks like a whole (shorter) chain.
async fn export(chain: &ReceiptChain, out: Option<&Path>) -> Result<(), CommandError> {
    let partial = out.map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    });
    let mut sink: Box<dyn Write + Send> = match &partial {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                CommandError::Usage(format!("cannot write {}: {e}", path.display()))
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut written = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let read = chain
        .read_each(|_, text| {
            if failed.is_none() {
                match writeln!(sink, "{text}") {
                    Ok(()) => written += 1,
                    Err(e) => failed = Some(e),
                }
            }
        })
        .await;
    let finished = read.map_err(runtime).and_then(|read| match failed.take() {
        Some(e) => Err(runtime(format!("cannot write the export: {e}"))),
        None => sink.flush().map(|()| read).map_err(runtime),
    });
    drop(sink);
    let read = match finished {
        Ok(read) => read,
        Err(e) => {
            if let Some(partial) = &partial {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    if let (Some(partial), Some(path)) = (&partial, out) {
        std::fs::rename(partial, path).map_err(|e| {
            runtime(format!(
                "cannot move {} to {}: {e}",
                partial.display(),
                path.display()
            ))
        })?;
    }
    let place = out.map_or("standard output".into(), |p| p.display().to_string());
    match &read.head {
        Some((seq, hash)) => {
            eprintln!("exported {written} receipts to {place} (head: receipt {seq}, hash {hash})")
        }
        None => eprintln!("exported {written} receipts to {place} (the chain is empty)"),
    }
    if !read.strays.is_empty() {
        eprintln!(
            "warning: {} stray entries in the chain were not exported; run `receipts verify`",
            read.strays.len()
        );
    }
    Ok(())
}
