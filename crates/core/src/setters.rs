//! Chainable setters for the workspace's `#[non_exhaustive]` configuration structs.
//!
//! A `#[non_exhaustive]` struct cannot be built with a struct expression outside its crate, so
//! each configuration starts from `Default` (or a constructor) and sets fields by name:
//! `GptqConfig::default().with_bits(Bits::B3).with_group_size(Some(128))`. New fields then arrive in a
//! minor release without breaking anyone.

/// Implements `pub fn SETTER(self, value: TYPE) -> Self` for each listed `FIELD: TYPE => SETTER`.
///
/// ```
/// #[derive(Default)]
/// #[non_exhaustive]
/// pub struct Options { pub samples: usize, pub seed: u64 }
/// qwen3_quant_core::setters!(Options { samples: usize => with_samples, seed: u64 => with_seed });
///
/// let o = Options::default().with_samples(128).with_seed(7);
/// assert_eq!((o.samples, o.seed), (128, 7));
/// ```
#[macro_export]
macro_rules! setters {
    ($ty:ty { $($field:ident: $fty:ty => $setter:ident),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $setter(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
