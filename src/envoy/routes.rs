//! What a request behind Envoy needs: the scopes a key must grant and the
//! cost it takes from the key's limits. Envoy says it per route with
//! `context_extensions` (`scopes`, separated by spaces or commas, and `cost`);
//! setups that cannot set them use the route table of the settings, matched
//! by path prefix (the longest wins) and method. A route's own extension wins
//! over the table, field by field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::domain::limit::MAX_LIMIT;
use crate::domain::{Scope, key_settings};
use crate::error::{Error, Result};

/// The `context_extensions` entry naming the scopes a route needs.
pub const SCOPES_EXTENSION: &str = "scopes";
/// The `context_extensions` entry naming what a request costs.
pub const COST_EXTENSION: &str = "cost";

/// One row of the route table, as written in the settings file:
/// `[[envoy_routes]] path_prefix = "/v1/posts", methods = ["POST"], scopes = ["posts:write"], cost = 2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub path_prefix: String,
    /// HTTP methods this row applies to (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Units taken from every limit and the quota (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
}

/// What a request must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirements {
    pub scopes: Vec<Scope>,
    pub cost: u32,
}

/// The route table, checked.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Route>,
}

#[derive(Clone, Debug)]
struct Route {
    path_prefix: String,
    /// Upper-case; empty for any method.
    methods: Vec<String>,
    scopes: Vec<Scope>,
    cost: u32,
}

impl RouteTable {
    /// Checks every row: a path prefix starting with `/`, scopes in the scope
    /// grammar, a cost of 1 to [`MAX_LIMIT`].
    pub fn parse(rules: &[RouteRule]) -> anyhow::Result<RouteTable> {
        let mut routes = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let route = Route::parse(rule).map_err(|e| {
                anyhow::anyhow!(
                    "envoy_routes[{i}] (path_prefix {:?}): {e}",
                    rule.path_prefix
                )
            })?;
            routes.push(route);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Ok(RouteTable { routes })
    }

    fn find(&self, path: &str, method: &str) -> Option<&Route> {
        self.routes.iter().find(|route| {
            path.starts_with(&route.path_prefix)
                && (route.methods.is_empty()
                    || route.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        })
    }

    /// The requirements of a request to `path` (without its query) with
    /// `method`: the route's `context_extensions` first, then this table,
    /// then none (any valid key, cost 1). A malformed extension is Envoy's
    /// configuration error, reported as INVALID_ARGUMENT.
    pub fn requirements(
        &self,
        extensions: &HashMap<String, String>,
        path: &str,
        method: &str,
    ) -> Result<Requirements> {
        let row = self.find(path, method);
        let scopes = match extensions.get(SCOPES_EXTENSION) {
            Some(raw) => parse_scope_list(raw)?,
            None => row.map(|r| r.scopes.clone()).unwrap_or_default(),
        };
        let cost = match extensions.get(COST_EXTENSION) {
            Some(raw) => parse_cost(raw)?,
            None => row.map_or(1, |r| r.cost),
        };
        Ok(Requirements { scopes, cost })
    }
}

impl Route {
    fn parse(rule: &RouteRule) -> Result<Route> {
        if !rule.path_prefix.starts_with('/') {
            return Err(Error::invalid(
                "path_prefix",
                "must start with '/', e.g. \"/v1/posts\"",
            ));
        }
        let cost = rule.cost.unwrap_or(1);
        check_cost(cost)?;
        Ok(Route {
            path_prefix: rule.path_prefix.clone(),
            methods: rule
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            scopes: key_settings::parse_scopes("scopes", &rule.scopes, false)?,
            cost,
        })
    }
}

/// `"posts:read users:read"` or `"posts:read,users:read"`.
fn parse_scope_list(raw: &str) -> Result<Vec<Scope>> {
    let listed: Vec<String> = raw
        .split([' ', ',', '\t'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    key_settings::parse_scopes("context_extensions.scopes", &listed, false)
}

fn parse_cost(raw: &str) -> Result<u32> {
    let cost = raw.trim().parse::<u32>().map_err(|_| {
        Error::invalid(
            "context_extensions.cost",
            format!("{raw:?} is not a whole number from 1 to {MAX_LIMIT}"),
        )
    })?;
    check_cost(cost)?;
    Ok(cost)
}

fn check_cost(cost: u32) -> Result<()> {
    if cost == 0 || cost > MAX_LIMIT {
        return Err(Error::invalid(
            "cost",
            format!("must be 1 to {MAX_LIMIT} (got {cost})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, methods: &[&str], scopes: &[&str], cost: Option<u32>) -> RouteRule {
        RouteRule {
            path_prefix: prefix.to_owned(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cost,
        }
    }

    fn names(requirements: &Requirements) -> Vec<String> {
        requirements.scopes.iter().map(Scope::to_string).collect()
    }

    fn extensions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn extension_scopes_split_on_spaces_and_commas() {
        let table = RouteTable::default();
        let found = table
            .requirements(
                &extensions(&[("scopes", "posts:read, users:read  admin:*"), ("cost", "3")]),
                "/",
                "GET",
            )
            .unwrap();
        assert_eq!(names(&found), ["posts:read", "users:read", "admin:*"]);
        assert_eq!(found.cost, 3);
    }

    #[test]
    fn the_longest_matching_prefix_and_method_win() {
        let table = RouteTable::parse(&[
            rule("/v1", &[], &["api:read"], None),
            rule("/v1/posts", &["post", "PUT"], &["posts:write"], Some(5)),
            rule("/v1/posts", &["GET"], &["posts:read"], None),
        ])
        .unwrap();
        let none = HashMap::new();
        let write = table.requirements(&none, "/v1/posts/7", "POST").unwrap();
        assert_eq!((names(&write), write.cost), (vec!["posts:write".into()], 5));
        let read = table.requirements(&none, "/v1/posts", "GET").unwrap();
        assert_eq!((names(&read), read.cost), (vec!["posts:read".into()], 1));
        let other = table.requirements(&none, "/v1/users", "DELETE").unwrap();
        assert_eq!(names(&other), ["api:read"]);
        let outside = table.requirements(&none, "/health", "GET").unwrap();
        assert_eq!((outside.scopes.len(), outside.cost), (0, 1));
    }

    #[test]
    fn the_routes_own_extensions_win_field_by_field() {
        let table = RouteTable::parse(&[rule("/v1", &[], &["api:read"], Some(4))]).unwrap();
        let scopes_only = table
            .requirements(&extensions(&[("scopes", "posts:write")]), "/v1/x", "GET")
            .unwrap();
        assert_eq!(
            (names(&scopes_only), scopes_only.cost),
            (vec!["posts:write".into()], 4)
        );
        let cost_only = table
            .requirements(&extensions(&[("cost", "2")]), "/v1/x", "GET")
            .unwrap();
        assert_eq!(
            (names(&cost_only), cost_only.cost),
            (vec!["api:read".into()], 2)
        );
    }

    #[test]
    fn malformed_extensions_and_rows_are_explained() {
        let table = RouteTable::default();
        for (key, value, needle) in [
            ("scopes", "posts read!", "context_extensions.scopes"),
            ("cost", "0", "cost"),
            ("cost", "two", "context_extensions.cost"),
        ] {
            let error = table
                .requirements(&extensions(&[(key, value)]), "/", "GET")
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{error}");
        }
        let error = RouteTable::parse(&[rule("v1", &[], &[], None)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("envoy_routes[0]") && error.contains("'/'"),
            "{error}"
        );
        assert!(RouteTable::parse(&[rule("/v1", &[], &["bad scope"], None)]).is_err());
        assert!(RouteTable::parse(&[rule("/v1", &[], &[], Some(0))]).is_err());
    }
}
