//! Head sampling: which requests get a span, decided before any span
//! exists, so an unsampled request (95 % of them by default) costs one
//! random number and a header lookup, not a span built and thrown away.
//!
//! The decision follows the OpenTelemetry sampler named by
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the specification's
//! values, the ratio test of its `TraceIdRatioBased`); the SDK then samples
//! every span it is given.

use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::Error;

/// The default sampling ratio of a trace without a sampled parent.
const RATIO_DEFAULT: f64 = 0.05;

/// What to do with a request that continues no trace.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    /// Sample it.
    Always,
    /// Never sample it.
    Never,
    /// Sample when the trace id's low 63 bits fall under `bound`.
    Ratio { bound: u64 },
}

/// The sampler of `OTEL_TRACES_SAMPLER`, decided per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// A remote parent's `sampled` flag decides for it (`parentbased_*`).
    follows_parent: bool,
    /// The decision when no parent decides.
    root: Root,
}

impl Default for Sampling {
    /// Parent-based, 5 % of the traces this service starts (SPEC section 7).
    fn default() -> Self {
        Self {
            follows_parent: true,
            root: Root::ratio(RATIO_DEFAULT),
        }
    }
}

impl Root {
    /// `TraceIdRatioBased`'s bound for `ratio` (clamped to 0 ..= 1).
    fn ratio(ratio: f64) -> Self {
        let bound = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
        Self::Ratio { bound }
    }

    fn samples(self, trace_id: TraceId) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Ratio { bound } => {
                let bytes = trace_id.to_bytes();
                let mut low = [0; 8];
                low.copy_from_slice(&bytes[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

impl Sampling {
    /// The sampler the environment names; the default when it names none.
    pub fn from_env() -> Result<Self, Error> {
        let name = std::env::var("OTEL_TRACES_SAMPLER").ok();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Self::parse(name.as_deref(), arg.as_deref())
    }

    fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, Error> {
        let Some(name) = name.map(str::trim).filter(|name| !name.is_empty()) else {
            return Ok(Self::default());
        };
        let ratio = || match arg.map(str::trim).filter(|arg| !arg.is_empty()) {
            None => Ok(Root::ratio(1.0)),
            Some(text) => match text.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(Root::ratio(ratio)),
                _ => Err(Error(format!(
                    "OTEL_TRACES_SAMPLER_ARG: '{text}' is not a ratio from 0 to 1"
                ))),
            },
        };
        let (follows_parent, root) = match name {
            "always_on" => (false, Root::Always),
            "always_off" => (false, Root::Never),
            "traceidratio" => (false, ratio()?),
            "parentbased_always_on" => (true, Root::Always),
            "parentbased_always_off" => (true, Root::Never),
            "parentbased_traceidratio" => (true, ratio()?),
            other => {
                return Err(Error(format!(
                    "OTEL_TRACES_SAMPLER: '{other}' is not supported (always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio)"
                )));
            }
        };
        Ok(Self {
            follows_parent,
            root,
        })
    }

    /// Whether a request continuing `parent` (an empty context when it sent
    /// no valid `traceparent`) is sampled.
    pub fn samples(&self, parent: &Context) -> bool {
        let span = parent.span();
        let remote = span.span_context();
        if !remote.is_valid() {
            // A root: the trace id the SDK will draw is as random as this one.
            return self
                .root
                .samples(RandomIdGenerator::default().new_trace_id());
        }
        if self.follows_parent {
            return remote.is_sampled();
        }
        self.root.samples(remote.trace_id())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    use super::*;

    fn parent(sampled: bool, trace_id: u128) -> Context {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(1),
            flags,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(remote)
    }

    /// The sampler names of the specification parse to what they mean, and
    /// anything else is refused with the variable's name.
    #[test]
    fn sampler_names_and_ratios_parse() {
        let parsed = |name, arg| Sampling::parse(Some(name), arg);
        assert_eq!(Sampling::parse(None, None).unwrap(), Sampling::default());
        assert_eq!(
            parsed("always_off", None).unwrap(),
            Sampling {
                follows_parent: false,
                root: Root::Never
            }
        );
        assert_eq!(
            parsed("parentbased_traceidratio", Some("0.25")).unwrap(),
            Sampling {
                follows_parent: true,
                root: Root::ratio(0.25)
            }
        );
        for (name, arg) in [
            ("xray", None),
            ("traceidratio", Some("2")),
            ("traceidratio", Some("x")),
        ] {
            let error = parsed(name, arg).unwrap_err().to_string();
            assert!(error.contains("OTEL_TRACES_SAMPLER"), "{error}");
        }
    }

    /// A parent's flag decides under `parentbased_*`, whatever the ratio;
    /// without a parent the ratio does, on the trace id's low bits.
    #[test]
    fn parents_and_ratios_decide() {
        let never_roots = Sampling::parse(Some("parentbased_always_off"), None).unwrap();
        assert!(never_roots.samples(&parent(true, 7)));
        assert!(!never_roots.samples(&parent(false, 7)));
        assert!(!never_roots.samples(&Context::new()));

        let half = Sampling::parse(Some("traceidratio"), Some("0.5")).unwrap();
        // Low 64 bits 0 → under every bound above 0; all ones → over every
        // bound below 1 (the high bits make both valid trace ids). The
        // parent's flag does not matter here.
        assert!(half.samples(&parent(false, 1 << 64)));
        assert!(!half.samples(&parent(true, u128::MAX)));

        let default = Sampling::default();
        let sampled = (0..20_000)
            .filter(|_| default.samples(&Context::new()))
            .count();
        // 5 % of 20,000 is 1,000; six standard deviations (~31 each) apart.
        assert!((800..=1_200).contains(&sampled), "{sampled}");
    }
}
