//! The envoyproxy/ratelimit configuration in force, reloaded when its files
//! change. A file that no longer reads keeps the last good configuration in
//! force, and the log says why (with the file and line).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::ratelimit_config::{ConfigError, RateLimitConfig, read_files};

/// How often the files are read again to see whether they changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

pub struct RateLimitConfigSource {
    /// The file or directory given in the settings.
    path: PathBuf,
    current: RwLock<Arc<RateLimitConfig>>,
    /// What the last look found, good or not: a change is a difference from it.
    last_seen: Mutex<Seen>,
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Files(Vec<(PathBuf, String)>),
    /// They could not be read (e.g. removed); the error says why.
    Unreadable(String),
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but do not read; the configuration in force stays.
    Rejected(ConfigError),
}

impl RateLimitConfigSource {
    /// Reads the configuration once; an error here refuses the start.
    pub fn load(path: &Path) -> Result<RateLimitConfigSource, ConfigError> {
        let files = read_files(path)?;
        let config = RateLimitConfig::parse(&files)?;
        Ok(RateLimitConfigSource {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(config)),
            last_seen: Mutex::new(Seen::Files(files)),
        })
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<RateLimitConfig> {
        self.current.read().expect("config lock poisoned").clone()
    }

    /// Reads the files again and, if they changed and read well, puts them in force.
    pub fn reload_if_changed(&self) -> Reload {
        let files = match read_files(&self.path) {
            Ok(files) => files,
            Err(error) => return self.rejected(Seen::Unreadable(error.to_string()), error),
        };
        let seen = Seen::Files(files);
        if *self.last_seen.lock().expect("config lock poisoned") == seen {
            return Reload::Unchanged;
        }
        let Seen::Files(files) = &seen else {
            unreachable!("just built from files")
        };
        match RateLimitConfig::parse(files) {
            Ok(config) => {
                *self.current.write().expect("config lock poisoned") = Arc::new(config);
                *self.last_seen.lock().expect("config lock poisoned") = seen;
                tracing::info!(path = %self.path.display(), "envoy rate-limit configuration reloaded");
                ::metrics::counter!("apikeyd_envoy_ratelimit_config_reloads_total", "result" => "reloaded")
                    .increment(1);
                Reload::Reloaded
            }
            Err(error) => self.rejected(seen, error),
        }
    }

    /// Logs a bad change once (until what is seen changes again).
    fn rejected(&self, seen: Seen, error: ConfigError) -> Reload {
        let mut last_seen = self.last_seen.lock().expect("config lock poisoned");
        if *last_seen != seen {
            tracing::warn!(%error, "envoy rate-limit configuration changed but does not read; keeping the last good one");
            ::metrics::counter!("apikeyd_envoy_ratelimit_config_reloads_total", "result" => "rejected")
                .increment(1);
            *last_seen = seen;
        }
        Reload::Rejected(error)
    }

    /// Looks at the files every [`RELOAD_INTERVAL`], forever.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let source = self.clone();
            // File reads block; keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || source.reload_if_changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpu(source: &RateLimitConfigSource) -> Option<u32> {
        use super::super::ratelimit_config::RuleLimit;
        source
            .current()
            .find("d", &[("k", "v")])
            .map(|m| match m.rule.limit {
                RuleLimit::PerUnit {
                    requests_per_unit, ..
                } => requests_per_unit,
                RuleLimit::Unlimited => u32::MAX,
            })
    }

    fn config(rpu: u32) -> String {
        format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: {rpu}}}\n"
        )
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_change_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rl.yaml");
        std::fs::write(&file, config(5)).unwrap();
        let source = RateLimitConfigSource::load(dir.path()).unwrap();
        assert_eq!(rpu(&source), Some(5));
        assert_eq!(source.reload_if_changed(), Reload::Unchanged);

        std::fs::write(&file, config(7)).unwrap();
        assert_eq!(source.reload_if_changed(), Reload::Reloaded);
        assert_eq!(rpu(&source), Some(7));

        std::fs::write(
            &file,
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n",
        )
        .unwrap();
        let Reload::Rejected(error) = source.reload_if_changed() else {
            panic!("a bad file is rejected")
        };
        assert_eq!(error.line, 4, "{error}");
        assert_eq!(rpu(&source), Some(7), "the last good configuration stays");

        std::fs::remove_file(&file).unwrap();
        assert!(matches!(source.reload_if_changed(), Reload::Rejected(_)));
        assert_eq!(rpu(&source), Some(7));

        std::fs::write(dir.path().join("other.yml"), config(9)).unwrap();
        assert_eq!(source.reload_if_changed(), Reload::Reloaded);
        assert_eq!(rpu(&source), Some(9));
    }

    #[test]
    fn a_bad_file_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rl.yaml");
        std::fs::write(&file, "domain: d\nextra: 1\n").unwrap();
        let error = RateLimitConfigSource::load(&file).err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("{}:2: unknown key 'extra' in the top level", file.display())
        );
    }
}
