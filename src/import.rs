//! `apikeyd import`: brings the keys of another store into apikeyd's
//! database, so that switching breaks no client. The sources ([`seed`]: the
//! seed design's tables, read-only in one transaction; [`jsonl`]: one JSON
//! object per line) only read rows; the rules are the authority's, shared
//! with the `ImportKeys` RPC.
//!
//! Running it again imports nothing twice (keys are known by digest), so an
//! interrupted import is resumed by running the same command.

mod jsonl;
mod seed;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::authority::{
    AuthorityPolicy, ImportActor, ImportRow, ImportRun, ImportSummary, KeyAuthority,
};
use crate::cli::ImportArgs;
use crate::config::Settings;
use crate::domain::import::{RowOutcome, RowResult};
use crate::invalidation::InvalidationBus;
use crate::key_cache::KeyCache;
use crate::last_used::LastUsedTracker;
use crate::secrets::SecretHasher;
use crate::store::{self, KeyStore};

/// The longest wait for Redis to take the import's invalidation at the end.
const INVALIDATION_DRAIN: Duration = Duration::from_secs(2);

/// Where rows come from.
enum Source {
    Seed(seed::SeedSource),
    Jsonl(jsonl::JsonlSource),
}

impl Source {
    async fn open(args: &ImportArgs) -> anyhow::Result<Source> {
        match (&args.from_seed, &args.from_jsonl) {
            (Some(url), _) => Ok(Source::Seed(seed::SeedSource::open(url, args.usage).await?)),
            (None, Some(path)) => Ok(Source::Jsonl(jsonl::JsonlSource::open(path)?)),
            (None, None) => anyhow::bail!("name a source: --from-seed URL or --from-jsonl FILE"),
        }
    }

    fn total(&self) -> u64 {
        match self {
            Source::Seed(source) => source.total(),
            Source::Jsonl(source) => source.total(),
        }
    }

    async fn next_batch(&mut self, size: usize) -> anyhow::Result<Vec<ImportRow>> {
        match self {
            Source::Seed(source) => source.next_batch(size).await,
            Source::Jsonl(source) => source.next_batch(size),
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        match self {
            Source::Seed(source) => source.close().await,
            Source::Jsonl(_) => Ok(()),
        }
    }
}

/// Runs `apikeyd import`; fails (after the summary) when a row was refused,
/// so that scripts notice keys left behind.
pub async fn run(args: ImportArgs, settings: Settings) -> anyhow::Result<()> {
    if args.usage && settings.redis.url.is_none() {
        anyhow::bail!(
            "--usage needs --redis-url (APIKEYD_REDIS_URL): usage counters live in Redis; \
             without it each server keeps them in its own memory, where an import cannot reach"
        );
    }
    let mut source = Source::open(&args).await?;
    let importer = Importer::connect(&settings).await?;
    let progress = progress_bar(source.total());
    let mut run = ImportRun::new(args.dry_run, ImportActor::command_line());
    let mut refused = Vec::new();
    loop {
        let rows = source.next_batch(usize::from(args.batch_size)).await?;
        if rows.is_empty() {
            break;
        }
        let read = rows.len() as u64;
        let results = importer.authority.import_batch(&mut run, rows).await?;
        refused.extend(
            results
                .into_iter()
                .filter(|r| matches!(r.outcome, RowOutcome::Refused(_))),
        );
        progress.inc(read);
        let tally = run.tally();
        progress.set_message(format!(
            "imported {} · already present {} · refused {}",
            tally.imported, tally.already_present, tally.refused
        ));
    }
    source.close().await?;
    let summary = importer.authority.finish_import(run).await?;
    progress.finish_and_clear();
    importer.finish().await;
    print!("{}", describe(&summary, &refused));
    if summary.tally.refused > 0 {
        anyhow::bail!(
            "{} rows were refused (listed above); fix them at the source and run the import again",
            summary.tally.refused
        );
    }
    Ok(())
}

/// The authority an import writes through, and the bus that tells running
/// servers (with Redis) that keys arrived.
struct Importer {
    authority: Arc<KeyAuthority>,
    bus: Option<(Arc<InvalidationBus>, tokio::task::JoinHandle<()>)>,
}

impl Importer {
    async fn connect(settings: &Settings) -> anyhow::Result<Importer> {
        let db = settings
            .database
            .target()
            .map_err(anyhow::Error::msg)?
            .connect()
            .await
            .context("cannot connect to apikeyd's database")?;
        store::prepare(&db, None)
            .await
            .context("cannot migrate apikeyd's database")?;
        let bus = match settings.redis.target()? {
            Some(target) => {
                let bus = InvalidationBus::over(&target, &settings.redis)?;
                let publisher = bus.spawn_publisher();
                Some((bus, publisher))
            }
            None => None,
        };
        let authority = KeyAuthority::new(
            KeyStore::new(db),
            // An import hashes nothing: imported keys keep their digests.
            Arc::new(SecretHasher::new(
                settings.argon2.costs(),
                settings.argon2.budget(),
            )?),
            Arc::new(LastUsedTracker::default()),
            Arc::new(KeyCache::new(
                1 << 20,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )),
            Arc::new(settings.limiter()?),
            Arc::new(settings.limits.tiers().context("invalid tiers")?),
            AuthorityPolicy {
                max_active_keys_per_owner: settings.limits.max_active_keys_per_owner,
            },
        )
        .publishing_to(bus.as_ref().map(|(bus, _)| bus.clone()));
        Ok(Importer {
            authority: Arc::new(authority),
            bus,
        })
    }

    /// Gives Redis a moment to take the invalidation, so running servers
    /// stop remembering the imported digests as absent now rather than
    /// when their cache entries age out.
    async fn finish(self) {
        if let Some((bus, publisher)) = self.bus {
            bus.finish(publisher, INVALIDATION_DRAIN).await;
        }
    }
}

/// A bar with counts on a terminal; nothing when stderr is not one.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {pos}/{len} rows · {msg} · {elapsed}")
            .expect("a valid template"),
    );
    bar
}

/// The report printed at the end, for a person.
fn describe(summary: &ImportSummary, refused: &[RowResult]) -> String {
    use std::fmt::Write;
    let tally = &summary.tally;
    let mut out = String::new();
    if summary.dry_run {
        out.push_str("dry run: nothing was written; this is what an import would do\n");
    }
    let _ = writeln!(
        out,
        "imported {}, skipped {} already present, refused {}",
        tally.imported, tally.already_present, tally.refused
    );
    for row in refused {
        if let RowOutcome::Refused(reason) = &row.outcome {
            let _ = writeln!(out, "  refused {}: {reason}", row.source_ref);
        }
    }
    if let Some(first) = summary.owners_over_limit.first() {
        let _ = writeln!(
            out,
            "owners over the limit of {} active keys (their keys were imported; CreateKey refuses them more until some are revoked):",
            first.limit
        );
        for owner in &summary.owners_over_limit {
            let _ = writeln!(
                out,
                "  {}: {} active keys",
                owner.owner_id, owner.active_keys
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyId;
    use crate::domain::import::{ImportTally, OwnerOverLimit};

    #[test]
    fn the_summary_names_every_refused_row_and_owner_over_the_limit() {
        let summary = ImportSummary {
            tally: ImportTally {
                imported: 3,
                already_present: 1,
                refused: 1,
                ..Default::default()
            },
            owners_over_limit: vec![OwnerOverLimit {
                owner_id: "user_7".into(),
                active_keys: 12,
                limit: 10,
            }],
            dry_run: false,
        };
        let rows = vec![
            RowResult {
                source_ref: "line 4".into(),
                outcome: RowOutcome::Refused("scopes: bad".into()),
            },
            RowResult {
                source_ref: "line 5".into(),
                outcome: RowOutcome::Imported(KeyId::generate()),
            },
        ];
        let text = describe(&summary, &rows);
        assert!(
            text.starts_with("imported 3, skipped 1 already present, refused 1\n"),
            "{text}"
        );
        assert!(text.contains("  refused line 4: scopes: bad\n"), "{text}");
        assert!(!text.contains("line 5"), "{text}");
        assert!(text.contains("limit of 10 active keys"), "{text}");
        assert!(text.contains("  user_7: 12 active keys\n"), "{text}");
    }

    #[test]
    fn a_dry_run_says_so_first() {
        let summary = ImportSummary {
            tally: ImportTally::default(),
            owners_over_limit: Vec::new(),
            dry_run: true,
        };
        assert!(describe(&summary, &[]).starts_with("dry run: nothing was written"));
    }
}
