//! Integer money.
//!
//! The ledger counts **nano-dollars** (1e-9 USD) in `i64`: every list price per token in the
//! built-in table is a whole number of nano-dollars per token or finer, and `i64` holds about
//! 9.2 billion USD, far beyond any per-tenant window. Redis Lua compares numbers as doubles,
//! exact up to 2^53 nano-dollars (about 9 million USD), which bounds a single limit's max.
//!
//! Prices are kept finer still, in **pico-dollars per unit** (1e-12 USD), so that a
//! per-second rate derived from a per-hour price loses at most a pico-dollar per unit.
//! A request's cost is summed in pico-dollars and rounded **up** to the next nano-dollar
//! once, so a request is never charged less than its exact cost.

/// Nano-dollars per US dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;
/// Pico-dollars per nano-dollar.
pub const PICOS_PER_NANO: i128 = 1_000;
/// Pico-dollars per US dollar.
pub const PICOS_PER_USD: f64 = 1e12;

/// Converts a dollar amount from configuration into nano-dollars (nearest).
pub fn usd_to_nanos(usd: f64) -> i64 {
    (usd * NANOS_PER_USD as f64).round() as i64
}

/// Converts nano-dollars back into dollars for display and JSON.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

/// Converts a dollar price per `per` units into pico-dollars per single unit (nearest).
pub fn usd_per_units_to_picos(usd: f64, per: f64) -> i128 {
    (usd * PICOS_PER_USD / per).round() as i128
}

/// Rounds a pico-dollar amount up to whole nano-dollars.
pub fn picos_to_nanos_ceil(picos: i128) -> i64 {
    if picos <= 0 {
        return 0;
    }
    let nanos = (picos + PICOS_PER_NANO - 1) / PICOS_PER_NANO;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// Formats nano-dollars exactly (integer arithmetic, rounded half up) with the precision
/// small budgets need: `$12.34` from a dollar up, `$0.0151` from a cent, `$0.004019` below.
pub fn format_usd(nanos: i64) -> String {
    let abs = nanos.unsigned_abs();
    let digits: u32 = match abs {
        0 => 2,
        a if a >= NANOS_PER_USD as u64 => 2,
        a if a >= NANOS_PER_USD as u64 / 100 => 4,
        _ => 6,
    };
    let scale = 10u64.pow(9 - digits);
    let units = (abs + scale / 2) / scale;
    let one = 10u64.pow(digits);
    let sign = if nanos < 0 { "-" } else { "" };
    format!("{sign}${}.{:0width$}", units / one, units % one, width = digits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_exact_for_list_prices() {
        // $0.30 per 1M tokens is 300_000 pico-dollars per token.
        assert_eq!(usd_per_units_to_picos(0.30, 1e6), 300_000);
        // $0.005 per 1M tokens.
        assert_eq!(usd_per_units_to_picos(0.005, 1e6), 5_000);
        // $0.05 per 1K characters.
        assert_eq!(usd_per_units_to_picos(0.05, 1e3), 50_000_000);
        assert_eq!(usd_to_nanos(10.0), 10_000_000_000);
        assert_eq!(usd_to_nanos(0.0615), 61_500_000);
    }

    #[test]
    fn rounding_goes_up_to_the_next_nano() {
        assert_eq!(picos_to_nanos_ceil(0), 0);
        assert_eq!(picos_to_nanos_ceil(1), 1);
        assert_eq!(picos_to_nanos_ceil(1000), 1);
        assert_eq!(picos_to_nanos_ceil(1001), 2);
        assert_eq!(picos_to_nanos_ceil(-5), 0);
    }

    #[test]
    fn formats_dollars() {
        assert_eq!(format_usd(10_020_000_000), "$10.02");
        assert_eq!(format_usd(2_009_700), "$0.002010");
        assert_eq!(format_usd(0), "$0.00");
        assert_eq!(format_usd(15_100_000), "$0.0151");
        assert_eq!(format_usd(4_019_000), "$0.004019");
        assert_eq!(format_usd(1_234_567_890_123), "$1234.57");
        assert_eq!(format_usd(-22_200_000), "-$0.0222");
        // Rounded half up on the exact integer, never through a float.
        assert_eq!(format_usd(9_999_999_995), "$10.00");
        assert_eq!(format_usd(5), "$0.000000");
        assert_eq!(format_usd(500), "$0.000001");
    }
}
