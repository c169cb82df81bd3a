//! envoyproxy/ratelimit's configuration, in its own YAML format, unchanged:
//! a `domain` and nested `descriptors` (`key`, optional `value` with `*`
//! wildcards, `rate_limit` with `unit` and `requests_per_unit` or
//! `unlimited`, `name`, `replaces`, `shadow_mode`, `quota_mode`,
//! `share_threshold`; `detailed_metric`, `value_to_metric` and `metadata` are
//! accepted and only shape their statistics, which apikeyd does not keep).
//! Our one addition is `rate_limit.algorithm`: `fixed_window` (theirs, the
//! default), `sliding_window` or `token_bucket`.
//!
//! What their loader refuses is refused here, with the file and line:
//! unknown or misplaced keys, lists of non-maps, non-string keys, an empty
//! domain or key, a duplicate descriptor or domain, a bad unit, `unlimited`
//! with a unit, an empty or self `replaces`, `share_threshold` without a
//! wildcard. Matching follows theirs: at each level `key_value`, then a
//! wildcard, then `key` alone; a limit applies only at the request's depth.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::yaml::{self, Node, NodeValue, Scalar};
use crate::domain::Algorithm;
use crate::domain::limit::{MAX_LIMIT, MAX_WINDOW_MS};

const ROOT_KEYS: &[&str] = &["domain", "descriptors"];
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];
const RATE_LIMIT_KEYS: &[&str] = &[
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "algorithm",
];
const REPLACES_KEYS: &[&str] = &["name"];

/// A time unit of `rate_limit.unit`, with envoyproxy/ratelimit's lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    fn parse(raw: &str) -> Option<Unit> {
        Some(match raw.to_ascii_uppercase().as_str() {
            "SECOND" => Unit::Second,
            "MINUTE" => Unit::Minute,
            "HOUR" => Unit::Hour,
            "DAY" => Unit::Day,
            "WEEK" => Unit::Week,
            "MONTH" => Unit::Month,
            "YEAR" => Unit::Year,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }
}

/// What a matched descriptor is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleLimit {
    /// Never limited; answered without the store.
    Unlimited,
    /// At most `requests_per_unit` hits per `unit` (0 refuses every hit).
    PerUnit {
        requests_per_unit: u32,
        unit: Unit,
        algorithm: Algorithm,
    },
}

/// A descriptor's `rate_limit` and the flags that change how it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub limit: RuleLimit,
    /// The name other rules' `replaces` refer to.
    pub name: Option<String>,
    /// Names of rules this one drops from the same request.
    pub replaces: Vec<String>,
    /// Counted, but never refuses (the descriptor answers OK).
    pub shadow_mode: bool,
    /// Over it, the descriptor is OVER_LIMIT but the request is refused only
    /// when every quota-mode descriptor of it is.
    pub quota_mode: bool,
}

/// A problem in a configuration file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every domain of one or more files, ready to match requests against.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    domains: HashMap<String, Level>,
}

/// One level of descriptors: by `key_value` (or `key` alone), and the
/// wildcard ones in file order.
#[derive(Debug, Default)]
struct Level {
    descriptors: HashMap<String, Descriptor>,
    wildcards: Vec<Wildcard>,
}

#[derive(Debug)]
struct Descriptor {
    rule: Option<Rule>,
    /// Every value matching this wildcard counts as the wildcard itself.
    share_threshold: bool,
    nested: Level,
}

#[derive(Debug)]
struct Wildcard {
    /// `key_value-with-*`, as stored in [`Level::descriptors`].
    composite: String,
    /// The composite split on `*`.
    parts: Vec<String>,
}

/// The rule a request descriptor matched, and the identity of its counter:
/// the domain and the descriptor's entries (a shared wildcard's pattern in
/// place of its value), so each value of a key-only match counts apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'a> {
    pub rule: &'a Rule,
    pub counter: String,
}

impl RateLimitConfig {
    /// Loads a file, or every `*.yaml` / `*.yml` file of a directory.
    pub fn load(path: &Path) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::parse(&read_files(path)?)
    }

    /// Parses files given as (name, contents); a domain may appear once.
    pub fn parse(files: &[(PathBuf, String)]) -> Result<RateLimitConfig, ConfigError> {
        let mut config = RateLimitConfig::default();
        let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (file, text) in files {
            let reader = Reader { file };
            let (domain, line, level) = reader.file(text)?;
            if let Some((first_file, first_line)) = seen.get(&domain) {
                return Err(reader.error(
                    line,
                    format!(
                        "duplicate domain '{domain}' (also in {}:{first_line})",
                        first_file.display()
                    ),
                ));
            }
            seen.insert(domain.clone(), (file.clone(), line));
            config.domains.insert(domain, level);
        }
        Ok(config)
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The rule for one request descriptor of `domain`, if one applies.
    pub fn find(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Matched<'_>> {
        let mut level = self.domains.get(domain)?;
        let mut counted = Vec::with_capacity(entries.len());
        let mut rule = None;
        for (i, (key, value)) in entries.iter().enumerate() {
            let composite = format!("{key}_{value}");
            let mut shared_pattern = None;
            let mut next = level.descriptors.get(&composite);
            if next.is_none() {
                let wildcard = level
                    .wildcards
                    .iter()
                    .find(|w| wildcard_match(&w.parts, &composite));
                if let Some(wildcard) = wildcard {
                    next = level.descriptors.get(&wildcard.composite);
                    if next.is_some_and(|d| d.share_threshold) {
                        shared_pattern = wildcard.composite.strip_prefix(&format!("{key}_"));
                    }
                }
            }
            let next = match next.or_else(|| level.descriptors.get(*key)) {
                Some(next) => next,
                None => break,
            };
            counted.push((*key, shared_pattern.unwrap_or(value)));
            if i == entries.len() - 1 {
                rule = next.rule.as_ref();
            }
            if next.nested.descriptors.is_empty() {
                break;
            }
            level = &next.nested;
        }
        rule.map(|rule| Matched {
            rule,
            counter: counter_name(domain, counted),
        })
    }
}

/// The contents of `path`, or of every `*.yaml` / `*.yml` file in it (by name).
pub fn read_files(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: 0,
            message: format!("cannot read it: {e}"),
        })
    };
    if !path.is_dir() {
        return Ok(vec![(path.to_owned(), read(path)?)]);
    }
    let listing = std::fs::read_dir(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        message: format!("cannot list it: {e}"),
    })?;
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ConfigError {
            file: path.to_owned(),
            line: 0,
            message: "the directory holds no .yaml or .yml file".to_owned(),
        });
    }
    paths
        .into_iter()
        .map(|file| read(&file).map(|text| (file, text)))
        .collect()
}

/// A descriptor's counter: the domain and its entries as `key=value` (the
/// separators escaped, so no two descriptors share a name).
pub fn counter_name<'a>(
    domain: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let escape = |s: &str| {
        s.replace('%', "%25")
            .replace('|', "%7C")
            .replace('=', "%3D")
    };
    let mut name = escape(domain);
    for (key, value) in entries {
        name.push('|');
        name.push_str(&escape(key));
        name.push('=');
        name.push_str(&escape(value));
    }
    name
}

/// Whether `value` matches a pattern split on `*` (each `*` any run of characters).
fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (first, last) = (&parts[0], &parts[parts.len() - 1]);
    if parts.len() == 1 {
        return first == value;
    }
    let fixed: usize = parts.iter().map(String::len).sum();
    if value.len() < fixed || !value.starts_with(first.as_str()) || !value.ends_with(last.as_str())
    {
        return false;
    }
    let mut middle = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part.as_str()) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Reads one file's tree, reporting problems at their line.
struct Reader<'a> {
    file: &'a Path,
}

type Fields<'n> = HashMap<&'n str, &'n Node>;

impl Reader<'_> {
    fn error(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        }
    }

    /// The domain, its line, and its descriptors.
    fn file(&self, text: &str) -> Result<(String, usize, Level), ConfigError> {
        let root = yaml::parse(text)
            .map_err(|e| self.error(e.line, format!("not valid YAML: {}", e.message)))?;
        let Some(root) = root else {
            return Err(self.error(1, "config file cannot have empty domain"));
        };
        let fields = self.fields(&root, ROOT_KEYS, "the top level")?;
        let domain = self.string(fields.get("domain").copied())?;
        if domain.is_empty() {
            let line = fields.get("domain").map_or(root.line, |n| n.line);
            return Err(self.error(line, "config file cannot have empty domain"));
        }
        let line = fields["domain"].line;
        let level = self.level(fields.get("descriptors").copied(), &domain)?;
        Ok((domain, line, level))
    }

    /// A map's entries by key, after checking every key is known here.
    fn fields<'n>(
        &self,
        node: &'n Node,
        allowed: &[&str],
        place: &str,
    ) -> Result<Fields<'n>, ConfigError> {
        let NodeValue::Mapping(entries) = &node.value else {
            return Err(self.error(
                node.line,
                format!("{place} must be a map, not {}", node.kind()),
            ));
        };
        let mut fields: Fields<'n> = HashMap::new();
        for (key, value) in entries {
            let Some(Scalar::Str(name)) = key.scalar() else {
                return Err(self.error(
                    key.line,
                    format!("key is not of type string: {}", key_text(key)),
                ));
            };
            if !allowed.contains(&name) {
                let known = [ROOT_KEYS, DESCRIPTOR_KEYS, RATE_LIMIT_KEYS]
                    .iter()
                    .any(|keys| keys.contains(&name));
                let message = if known {
                    format!("'{name}' does not belong in {place}")
                } else {
                    format!("unknown key '{name}' in {place}")
                };
                return Err(self.error(key.line, message));
            }
            if let Some(first) = fields.insert(name, value) {
                return Err(self.error(
                    key.line,
                    format!(
                        "key '{name}' appears twice in {place} (first on line {})",
                        first.line
                    ),
                ));
            }
        }
        Ok(fields)
    }

    /// The items of a list of maps (absent or empty: none).
    fn list<'n>(&self, node: Option<&'n Node>, what: &str) -> Result<&'n [Node], ConfigError> {
        let Some(node) = node else { return Ok(&[]) };
        match &node.value {
            NodeValue::Sequence(items) => {
                if let Some(item) = items
                    .iter()
                    .find(|i| !matches!(i.value, NodeValue::Mapping(_)))
                {
                    return Err(self.error(
                        item.line,
                        format!(
                            "{what} must be a list of maps; this item is {}",
                            item.kind()
                        ),
                    ));
                }
                Ok(items)
            }
            _ if node.scalar() == Some(Scalar::Null) => Ok(&[]),
            _ => Err(self.error(
                node.line,
                format!("{what} must be a list, not {}", node.kind()),
            )),
        }
    }

    fn level(&self, node: Option<&Node>, parent: &str) -> Result<Level, ConfigError> {
        let mut level = Level::default();
        for item in self.list(node, "descriptors")? {
            let fields = self.fields(item, DESCRIPTOR_KEYS, "a descriptor")?;
            let key = self.string(fields.get("key").copied())?;
            if key.is_empty() {
                return Err(self.error(item.line, "descriptor has empty key"));
            }
            let value = self.string(fields.get("value").copied())?;
            let composite = if value.is_empty() {
                key.clone()
            } else {
                format!("{key}_{value}")
            };
            let path = format!("{parent}.{composite}");
            if level.descriptors.contains_key(&composite) {
                return Err(self.error(
                    item.line,
                    format!("duplicate descriptor composite key '{path}'"),
                ));
            }
            let share_threshold = self.boolean(fields.get("share_threshold").copied())?;
            if share_threshold && !composite.contains('*') {
                return Err(self.error(
                    item.line,
                    format!(
                        "share_threshold can only be used with wildcard values (containing '*'), but found key '{composite}'"
                    ),
                ));
            }
            for flag in ["detailed_metric", "value_to_metric"] {
                self.boolean(fields.get(flag).copied())?;
            }
            let rule = match fields.get("rate_limit") {
                Some(node) if node.scalar() != Some(Scalar::Null) => Some(self.rule(
                    node,
                    self.boolean(fields.get("shadow_mode").copied())?,
                    self.boolean(fields.get("quota_mode").copied())?,
                )?),
                _ => None,
            };
            if composite.contains('*') {
                level.wildcards.push(Wildcard {
                    parts: composite.split('*').map(str::to_owned).collect(),
                    composite: composite.clone(),
                });
            }
            let nested = self.level(fields.get("descriptors").copied(), &path)?;
            level.descriptors.insert(
                composite,
                Descriptor {
                    rule,
                    share_threshold,
                    nested,
                },
            );
        }
        Ok(level)
    }

    fn rule(&self, node: &Node, shadow_mode: bool, quota_mode: bool) -> Result<Rule, ConfigError> {
        let fields = self.fields(node, RATE_LIMIT_KEYS, "a rate_limit")?;
        let unlimited = self.boolean(fields.get("unlimited").copied())?;
        let unit_node = fields.get("unit").copied();
        let unit_text = self.string(unit_node)?;
        let unit = Unit::parse(&unit_text);
        let line = unit_node.map_or(node.line, |n| n.line);
        let limit = match (unlimited, unit) {
            (true, Some(_)) => {
                return Err(self.error(line, "should not specify rate limit unit when unlimited"));
            }
            (true, None) => RuleLimit::Unlimited,
            (false, None) => {
                return Err(self.error(line, format!("invalid rate limit unit '{unit_text}'")));
            }
            (false, Some(unit)) => {
                let algorithm = self.algorithm(fields.get("algorithm").copied())?;
                // The sliding window's and GCRA's exact arithmetic holds to 30 days.
                if algorithm != Algorithm::FixedWindow && unit.seconds() * 1000 > MAX_WINDOW_MS {
                    return Err(self.error(
                        line,
                        "sliding_window and token_bucket windows are at most 30 days; a year needs fixed_window",
                    ));
                }
                RuleLimit::PerUnit {
                    requests_per_unit: self
                        .requests_per_unit(fields.get("requests_per_unit").copied())?,
                    unit,
                    algorithm,
                }
            }
        };
        let name = Some(self.string(fields.get("name").copied())?).filter(|n| !n.is_empty());
        let mut replaces = Vec::new();
        for entry in self.list(fields.get("replaces").copied(), "replaces")? {
            let entry_fields = self.fields(entry, REPLACES_KEYS, "a replaces entry")?;
            let replaced = self.string(entry_fields.get("name").copied())?;
            if replaced.is_empty() {
                return Err(self.error(entry.line, "should not have an empty replaces entry"));
            }
            if name.as_deref() == Some(replaced.as_str()) {
                return Err(self.error(
                    entry.line,
                    "replaces should not contain name of same descriptor",
                ));
            }
            replaces.push(replaced);
        }
        Ok(Rule {
            limit,
            name,
            replaces,
            shadow_mode,
            quota_mode,
        })
    }

    /// Any scalar, as its text (yaml.v2 reads `value: 123` as "123"); absent or null is "".
    fn string(&self, node: Option<&Node>) -> Result<String, ConfigError> {
        let Some(node) = node else {
            return Ok(String::new());
        };
        match (&node.value, node.scalar()) {
            (_, Some(Scalar::Null)) => Ok(String::new()),
            (NodeValue::Scalar { text, .. }, _) => Ok(text.clone()),
            _ => Err(self.error(
                node.line,
                format!("expected a string, found {}", node.kind()),
            )),
        }
    }

    fn boolean(&self, node: Option<&Node>) -> Result<bool, ConfigError> {
        match node.map(|n| (n, n.scalar())) {
            None | Some((_, Some(Scalar::Null))) => Ok(false),
            Some((_, Some(Scalar::Bool(b)))) => Ok(b),
            Some((node, _)) => Err(self.error(
                node.line,
                format!("expected true or false, found {}", node.kind()),
            )),
        }
    }

    fn requests_per_unit(&self, node: Option<&Node>) -> Result<u32, ConfigError> {
        match node.map(|n| (n, n.scalar())) {
            None | Some((_, Some(Scalar::Null))) => Ok(0),
            Some((_, Some(Scalar::Int(n)))) if (0..=i64::from(MAX_LIMIT)).contains(&n) => {
                Ok(n as u32)
            }
            Some((node, _)) => Err(self.error(
                node.line,
                format!(
                    "requests_per_unit must be a whole number from 0 to {MAX_LIMIT}, found {}",
                    key_text(node)
                ),
            )),
        }
    }

    fn algorithm(&self, node: Option<&Node>) -> Result<Algorithm, ConfigError> {
        let raw = self.string(node)?;
        match raw.as_str() {
            "" | "fixed_window" => Ok(Algorithm::FixedWindow),
            "sliding_window" => Ok(Algorithm::SlidingWindow),
            "token_bucket" => Ok(Algorithm::TokenBucket),
            other => Err(self.error(
                node.map_or(0, |n| n.line),
                format!(
                    "unknown algorithm '{other}'; use fixed_window (the default), sliding_window or token_bucket"
                ),
            )),
        }
    }
}

fn key_text(node: &Node) -> String {
    match &node.value {
        NodeValue::Scalar { text, .. } => text.clone(),
        _ => node.kind().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::parse(&[(PathBuf::from("rl.yaml"), text.to_owned())])
    }

    fn limit_of(config: &RateLimitConfig, domain: &str, entries: &[(&str, &str)]) -> Option<u32> {
        config.find(domain, entries).map(|m| match m.rule.limit {
            RuleLimit::PerUnit {
                requests_per_unit, ..
            } => requests_per_unit,
            RuleLimit::Unlimited => u32::MAX,
        })
    }

    /// envoyproxy/ratelimit's test/config/basic_config.yaml, abridged.
    const BASIC: &str = "
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key2
    value: value2
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: key2
    value: value3
  - key: key6
    rate_limit:
      unlimited: true
";

    #[test]
    fn the_most_specific_match_at_the_requests_depth_applies() {
        let config = parse(BASIC).unwrap();
        let d = "test-domain";
        assert_eq!(
            limit_of(&config, d, &[("key1", "value1"), ("subkey1", "x")]),
            Some(5)
        );
        assert_eq!(
            limit_of(&config, d, &[("key1", "value1"), ("subkey1", "subvalue1")]),
            Some(10)
        );
        assert_eq!(
            limit_of(&config, d, &[("key1", "value1")]),
            None,
            "no limit at depth 1"
        );
        assert_eq!(limit_of(&config, d, &[("key2", "anything")]), Some(20));
        assert_eq!(limit_of(&config, d, &[("key2", "value2")]), Some(30));
        assert_eq!(
            limit_of(&config, d, &[("key2", "value3")]),
            None,
            "whitelisted value"
        );
        assert_eq!(
            limit_of(&config, d, &[("key2", "value2"), ("deeper", "x")]),
            None,
            "deeper than the configuration"
        );
        assert_eq!(limit_of(&config, d, &[("key6", "x")]), Some(u32::MAX));
        assert_eq!(limit_of(&config, "other", &[("key2", "x")]), None);
    }

    #[test]
    fn key_only_matches_count_each_value_apart() {
        let config = parse(BASIC).unwrap();
        let a = config.find("test-domain", &[("key2", "a")]).unwrap();
        let b = config.find("test-domain", &[("key2", "b")]).unwrap();
        assert_ne!(a.counter, b.counter);
        assert_eq!(a.counter, "test-domain|key2=a");
        let tricky = config.find("test-domain", &[("key2", "a|key2=b")]).unwrap();
        assert_ne!(tricky.counter, "test-domain|key2=a|key2=b");
    }

    #[test]
    fn wildcards_match_anywhere_and_shared_ones_share_a_counter() {
        let config = parse(
            "
domain: w
descriptors:
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: other
    value: foo*
    rate_limit: {unit: hour, requests_per_unit: 7}
",
        )
        .unwrap();
        assert_eq!(
            limit_of(&config, "w", &[("path", "/api/123/action")]),
            Some(20)
        );
        assert_eq!(limit_of(&config, "w", &[("path", "/api/123/other")]), None);
        let a = config.find("w", &[("files", "files/a.pdf")]).unwrap();
        let b = config.find("w", &[("files", "files/b.csv")]).unwrap();
        assert_eq!(a.counter, b.counter, "share_threshold: one counter");
        let x = config.find("w", &[("other", "foo1")]).unwrap();
        let y = config.find("w", &[("other", "foo2")]).unwrap();
        assert_ne!(
            x.counter, y.counter,
            "without share_threshold each value counts apart"
        );
    }

    #[test]
    fn rules_keep_names_replaces_modes_and_our_algorithm() {
        let config = parse(
            "
domain: d
descriptors:
  - key: a
    shadow_mode: true
    quota_mode: true
    rate_limit:
      name: first
      replaces: [{name: second}]
      unit: HOUR
      requests_per_unit: 0
      algorithm: token_bucket
",
        )
        .unwrap();
        let rule = config.find("d", &[("a", "x")]).unwrap().rule;
        assert_eq!(rule.name.as_deref(), Some("first"));
        assert_eq!(rule.replaces, ["second"]);
        assert!(rule.shadow_mode && rule.quota_mode);
        assert_eq!(
            rule.limit,
            RuleLimit::PerUnit {
                requests_per_unit: 0,
                unit: Unit::Hour,
                algorithm: Algorithm::TokenBucket
            }
        );
    }

    /// Each file envoyproxy/ratelimit's test/config refuses, with the line we name.
    #[test]
    fn files_their_loader_refuses_are_refused_with_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n\n  - key: k\n    value: v\n",
                6,
                "duplicate descriptor composite key 'd.k_v'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n    ratelimit:\n      unit: day\n",
                5,
                "unknown key 'ratelimit'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requestsperunit: 5\n",
                6,
                "unknown key 'requestsperunit'",
            ),
            ("domain: d\ndescriptors:\n  - a\n  - b\n", 3, "list of maps"),
            (
                "0.25: test-domain\ndescriptors:\n",
                1,
                "key is not of type string: 0.25",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: self\n      replaces:\n        - name:\n      unit: second\n",
                7,
                "empty replaces entry",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: self\n      replaces:\n        - name: self\n      unit: second\n",
                7,
                "name of same descriptor",
            ),
            (
                "domain: d\ndescriptors:\n  - key: foo\n    rate_limit:\n      unlimited: true\n      unit: day\n      requests_per_unit: 25\n",
                6,
                "should not specify rate limit unit when unlimited",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: foo\n      requests_per_unit: 5\n",
                5,
                "invalid rate limit unit 'foo'",
            ),
            (
                "domain: d\ndescriptors:\n  - value: value1\n",
                3,
                "descriptor has empty key",
            ),
            ("descriptors:\n", 1, "cannot have empty domain"),
            ("'''\n", 1, "not valid YAML"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n    rate_limit: {unit: day, requests_per_unit: 1}\n",
                3,
                "share_threshold can only be used with wildcard",
            ),
            ("domain: d\ndomain: e\n", 2, "appears twice"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: -1}\n",
                4,
                "requests_per_unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 1, algorithm: leaky}\n",
                4,
                "unknown algorithm 'leaky'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    unit: day\n",
                4,
                "'unit' does not belong in a descriptor",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: year\n      algorithm: sliding_window\n",
                5,
                "a year needs fixed_window",
            ),
        ];
        for (text, line, needle) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, *line, "{text}: {error}");
            assert!(error.message.contains(needle), "{text}: {error}");
            assert!(
                error.to_string().starts_with(&format!("rl.yaml:{line}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn the_example_next_to_envoy_yaml_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/ratelimit.yaml");
        let config = RateLimitConfig::load(&path).unwrap();
        assert_eq!(limit_of(&config, "edge", &[("owner", "user_1")]), Some(600));
        assert_eq!(
            limit_of(&config, "edge", &[("remote_address", "198.51.100.66")]),
            Some(0)
        );
    }

    #[test]
    fn a_domain_may_appear_in_one_file_only() {
        let files = [
            (PathBuf::from("a.yaml"), "domain: d\n".to_owned()),
            (PathBuf::from("b.yaml"), "\ndomain: d\n".to_owned()),
        ];
        let error = RateLimitConfig::parse(&files).unwrap_err();
        assert_eq!((error.file.to_str(), error.line), (Some("b.yaml"), 2));
        assert!(error.message.contains("also in a.yaml:1"), "{error}");
    }
}
