//! Money in integer minor units with an ISO 4217 currency. Never floats.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr};

/// An ISO 4217 currency code such as `EUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")
)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// The three-letter code.
    pub fn code(self) -> &'static str {
        self.0.code()
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        iso_currency::Currency::from_code(s)
            .map(Currency)
            .ok_or_else(|| MoneyError::UnknownCurrency(s.chars().take(16).collect()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An amount in minor units (cents for EUR) of one currency.
///
/// ```
/// use souk_pipelines::{Money, MoneyError};
/// let price = Money { amount_minor: 1299, currency: "EUR".parse()? };
/// assert_eq!(price.times(3)?.amount_minor, 3897);
/// assert_eq!(price.times(i64::MAX), Err(MoneyError::Overflow));
/// # Ok::<(), MoneyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

/// Money that cannot be represented or combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}: expected an ISO 4217 code such as EUR")]
    UnknownCurrency(String),
    #[error("amount overflows 64-bit minor units")]
    Overflow,
}

impl Money {
    /// `amount_minor × quantity`, checked.
    pub fn times(self, quantity: i64) -> Result<Money, MoneyError> {
        let amount_minor = self.amount_minor.checked_mul(quantity).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, currency: self.currency })
    }

    /// Sum of amounts in one currency, checked.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        debug_assert_eq!(self.currency, other.currency);
        let amount_minor = self.amount_minor.checked_add(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, currency: self.currency })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_iso_4217() {
        assert_eq!("EUR".parse::<Currency>().map(Currency::code), Ok("EUR"));
        assert!("eur".parse::<Currency>().is_err());
        assert!("XXQ".parse::<Currency>().is_err());
        assert!("".parse::<Currency>().is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        let eur: Currency = "EUR".parse().expect("EUR");
        let m = Money { amount_minor: i64::MAX / 2 + 1, currency: eur };
        assert_eq!(m.times(2), Err(MoneyError::Overflow));
        assert_eq!(m.times(1).map(|m| m.amount_minor), Ok(i64::MAX / 2 + 1));
    }
}
