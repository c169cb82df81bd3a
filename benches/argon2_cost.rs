//! `cargo bench --bench argon2_cost`: how long one argon2id verification
//! takes on this machine, at the default cost of API keys and of root keys
//! (the figures behind `Argon2Cost::API_KEYS`, whose target is ≤ 0.5 ms).
//!
//! Each cost is verified `RUNS` times in a row on one thread, after one
//! warm-up run; the median and the fastest run are printed. Another cost can
//! be measured with `-- MEMORY_KIB ITERATIONS [PARALLELISM]`.

use std::time::{Duration, Instant};

use apikeyd::domain::{GeneratedKey, KeyKind};
use apikeyd::secrets::Argon2Cost;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};
use rand_core::OsRng;

const RUNS: usize = 200;

fn main() -> anyhow::Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            anyhow::anyhow!("usage: argon2_cost [MEMORY_KIB ITERATIONS [PARALLELISM]]: {e}")
        })?;
    let costs = match args.as_slice() {
        [] => vec![
            ("API keys (default)", Argon2Cost::API_KEYS),
            ("root keys (default, OWASP)", Argon2Cost::OWASP),
        ],
        [memory_kib, iterations, rest @ ..] => vec![(
            "given",
            Argon2Cost {
                memory_kib: *memory_kib,
                iterations: *iterations,
                parallelism: rest.first().copied().unwrap_or(1),
            },
        )],
        _ => anyhow::bail!("usage: argon2_cost [MEMORY_KIB ITERATIONS [PARALLELISM]]"),
    };
    println!(
        "one argon2id verification, one thread, median and fastest of {RUNS} runs ({} CPUs, load average {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    for (name, cost) in costs {
        let (median, fastest) = time_verification(cost)?;
        println!(
            "{name:<28} m={} KiB, t={}, p={}: median {:.3} ms, fastest {:.3} ms",
            cost.memory_kib,
            cost.iterations,
            cost.parallelism,
            ms(median),
            ms(fastest)
        );
    }
    Ok(())
}

fn time_verification(cost: Argon2Cost) -> anyhow::Result<(Duration, Duration)> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, cost.params()?);
    let key = GeneratedKey::generate(KeyKind::Live);
    let hash = argon2
        .hash_password(key.secret.expose(), &SaltString::generate(&mut OsRng))
        .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))?
        .to_string();
    let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    let verify = || {
        Argon2::default()
            .verify_password(key.secret.expose(), &parsed)
            .map_err(|e| anyhow::anyhow!("argon2 verification failed: {e}"))
    };
    verify()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        verify()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[RUNS / 2], times[0]))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
