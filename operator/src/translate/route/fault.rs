//! VirtualService `fault` as the route's per-filter config of Envoy's fault filter
//! (`envoy.filters.http.fault`, in every HTTP filter chain: see `http_filters.rs`), as
//! istiod's `TranslateFault` builds it.

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};

use super::convert::{duration, fractional_percent};
use crate::model::routing::{AbortError, Fault};

pub fn http_fault(fault: &Fault) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(fractional_percent(d.percentage)),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.fixed))),
        }),
        abort: fault.abort.as_ref().map(|a| FaultAbort {
            // Left unset when the route sets none, as istiod does.
            percentage: a.percentage.map(fractional_percent),
            error_type: Some(match a.error {
                AbortError::HttpStatus(status) => ErrorType::HttpStatus(status),
                AbortError::GrpcStatus(code) => ErrorType::GrpcStatus(code),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

    use super::*;
    use crate::model::routing::{FaultAbort as Abort, FaultDelay as Delay, Fraction};

    #[test]
    fn delay_and_abort_with_their_percentages() {
        let fault = Fault {
            delay: Some(Delay {
                fixed: Duration::from_millis(500),
                percentage: Fraction::PerMillion(125_000),
            }),
            abort: Some(Abort {
                error: AbortError::HttpStatus(418),
                percentage: Some(Fraction::PerHundred(50)),
            }),
        };
        let out = http_fault(&fault);
        let delay = out.delay.expect("delay");
        let percentage = delay.percentage.expect("delay percentage");
        assert_eq!(
            (percentage.numerator, percentage.denominator),
            (125_000, DenominatorType::Million as i32)
        );
        match delay.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(d)) => {
                assert_eq!((d.seconds, d.nanos), (0, 500_000_000))
            }
            other => panic!("not a fixed delay: {other:?}"),
        }
        let abort = out.abort.expect("abort");
        assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(418)));
        let percentage = abort.percentage.expect("abort percentage");
        assert_eq!(
            (percentage.numerator, percentage.denominator),
            (50, DenominatorType::Hundred as i32)
        );
    }

    #[test]
    fn grpc_abort_without_percentage_and_no_delay() {
        let fault = Fault {
            delay: None,
            abort: Some(Abort {
                error: AbortError::GrpcStatus(14),
                percentage: None,
            }),
        };
        let out = http_fault(&fault);
        assert!(out.delay.is_none());
        let abort = out.abort.expect("abort");
        assert_eq!(abort.error_type, Some(ErrorType::GrpcStatus(14)));
        assert!(abort.percentage.is_none());
    }
}
