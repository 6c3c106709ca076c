//! One retry policy for every call to Compute Engine and Cloud Storage, and for the two waits
//! on GCE's own state (a disk still attached, a metadata fingerprint raced).
//!
//! A call is tried until it succeeds, fails for good, runs out of attempts or out of its time
//! budget. Each attempt has a deadline of its own, so an endpoint that accepts connections and
//! never answers costs one budget (under a minute), not attempts × a client timeout.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;

/// How long a connection may take to open: a dead endpoint is known in seconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often and how patiently a call is sent again.
///
/// Attempt `n` (from 1) is followed by a wait of `base_delay × n × (1 + a random fraction)`,
/// at most `max_delay`: Daisy's (1–2 s) × attempt, jittered so parallel builds do not retry in
/// step.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// How many times a call is sent in all, at least once.
    pub attempts: u32,
    /// The first wait before the random part.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// The longest one attempt may take; one that takes longer counts as never answered.
    pub attempt_timeout: Duration,
    /// The longest the call may take, attempts and waits together.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// For a small call: 30 s an attempt, 45 s in all, so a silent endpoint fails in under
    /// a minute with its URL named.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(30),
            budget: Duration::from_secs(45),
        }
    }
}

/// A failed attempt, and whether sending it again may help.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: anyhow::Error,
    /// Whether the same call may succeed if sent again after a pause.
    pub retryable: bool,
}

impl Failure {
    /// A failure that another attempt cannot mend.
    pub fn fatal(error: anyhow::Error) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }

    /// A failure another attempt may mend.
    pub fn transient(error: anyhow::Error) -> Failure {
        Failure {
            error,
            retryable: true,
        }
    }

    /// A failure worth another attempt only when the API error under it is of `kind` (a disk
    /// still in use, a metadata fingerprint race).
    pub fn retry_on(kind: crate::error::ErrorKind, error: anyhow::Error) -> Failure {
        Failure {
            retryable: crate::error::kind_of(&error) == Some(kind),
            error,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        // A uuid's random bits are the one source of randomness already in the tree.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        self.base_delay
            .saturating_mul(attempt.max(1))
            .mul_f64(1.0 + jitter)
            .min(self.max_delay)
    }

    /// The same policy with a longer deadline for each attempt (and a budget that fits two),
    /// for a call the server may hold open on purpose, such as `operations.wait`.
    pub fn long_poll(&self, attempt_timeout: Duration) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout,
            budget: self.budget.max(attempt_timeout * 2),
            ..self.clone()
        }
    }

    /// Runs `call` (given the attempt's number, from 1) until it succeeds, fails for good, or
    /// the attempts or the budget run out; the last failure is returned, saying how many
    /// attempts were made when there was more than one.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Failure>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let start = Instant::now();
        let deadline = start + self.budget;
        let attempts = self.attempts.max(1);
        let mut attempt = 1;
        loop {
            let allowed = self
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let failure = match tokio::time::timeout(allowed, call(attempt)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => Failure::transient(anyhow!("no answer within {}s", allowed.as_secs())),
            };
            let wait = self.delay(attempt);
            let out_of_time = Instant::now() + wait >= deadline;
            if !failure.retryable || attempt >= attempts || out_of_time {
                if attempt == 1 {
                    return Err(failure);
                }
                let budget = if out_of_time && attempt < attempts {
                    format!(", its budget of {}s", self.budget.as_secs())
                } else {
                    String::new()
                };
                return Err(Failure {
                    error: failure.error.context(format!(
                        "gave up after {attempt} attempts in {}s{budget}",
                        start.elapsed().as_secs()
                    )),
                    retryable: failure.retryable,
                });
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
impl RetryPolicy {
    /// Four attempts a few milliseconds apart, for unit tests.
    pub(crate) fn quick() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            budget: Duration::from_secs(5),
            ..RetryPolicy::quick()
        }
    }

    #[test]
    fn delays_grow_with_the_attempt_are_jittered_and_capped() {
        let policy = RetryPolicy::default();
        for attempt in 1..=3u32 {
            let d = policy.delay(attempt);
            assert!(d >= Duration::from_secs(attempt.into()), "{attempt}: {d:?}");
            assert!(
                d < Duration::from_secs((2 * attempt).into()),
                "{attempt}: {d:?}"
            );
        }
        assert_eq!(policy.delay(100), policy.max_delay);
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| policy.delay(1)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    #[tokio::test]
    async fn retryable_failures_are_sent_again_and_fatal_ones_are_not() {
        let tries = AtomicU32::new(0);
        let got = fast()
            .run(|n| {
                tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(Failure::transient(anyhow!("busy")))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(got, 3);
        let tries = AtomicU32::new(0);
        let err = fast()
            .run(|_| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Failure::fatal(anyhow!("no"))) }
            })
            .await
            .unwrap_err();
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert_eq!(format!("{:#}", err.error), "no");
    }

    #[tokio::test]
    async fn the_last_failure_says_how_many_attempts_were_made() {
        let err = fast()
            .run(|_| async { Err::<(), _>(Failure::transient(anyhow!("503"))) })
            .await
            .unwrap_err();
        let text = format!("{:#}", err.error);
        assert!(text.starts_with("gave up after 4 attempts"), "{text}");
        assert!(text.ends_with("503"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_call_is_cut_per_attempt_and_by_the_budget() {
        let policy = RetryPolicy::default();
        let start = Instant::now();
        let tries = AtomicU32::new(0);
        let err = policy
            .run(|_| {
                tries.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<(), Failure>>()
            })
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(took <= policy.budget, "{took:?}");
        assert!(took >= Duration::from_secs(30), "{took:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        let text = format!("{:#}", err.error);
        assert!(
            text.contains("budget") && text.contains("no answer within"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_gets_its_own_attempt_deadline() {
        let policy = RetryPolicy::default().long_poll(Duration::from_secs(150));
        let start = Instant::now();
        let got = policy
            .run(|_| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok::<_, Failure>(1)
            })
            .await
            .unwrap();
        assert_eq!(got, 1);
        assert_eq!(start.elapsed().as_secs(), 120);
    }
}
