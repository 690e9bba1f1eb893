//! Small conversions the route policies share: percentages and durations as Envoy's types.

use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Duration;

use crate::model::routing::Fraction;

pub fn fractional_percent(f: Fraction) -> FractionalPercent {
    let (numerator, denominator) = match f {
        Fraction::PerHundred(n) => (n, DenominatorType::Hundred),
        Fraction::PerMillion(n) => (n, DenominatorType::Million),
    };
    FractionalPercent {
        numerator,
        denominator: denominator as i32,
    }
}

pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_keep_their_denominator() {
        let hundred = fractional_percent(Fraction::PerHundred(50));
        assert_eq!(
            (hundred.numerator, hundred.denominator),
            (50, DenominatorType::Hundred as i32)
        );
        let million = fractional_percent(Fraction::PerMillion(125_000));
        assert_eq!(
            (million.numerator, million.denominator),
            (125_000, DenominatorType::Million as i32)
        );
    }

    #[test]
    fn durations_split_into_seconds_and_nanos() {
        let d = duration(std::time::Duration::from_millis(1_500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
