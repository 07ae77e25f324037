//! States stored as text: [`text_column!`](crate::text_column!) gives an enum its `FromStr` and
//! its SQL conversions for both backends (rusqlite and tokio-postgres), from its `ALL` and
//! `as_str`, so a store binds and reads the enum itself, never a string it matches by hand.

/// A stored or requested state that its enum does not know (the schema's `CHECK` keeps such
/// values out of the tables).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    /// What the state is of, e.g. `order status`.
    pub kind: &'static str,
    pub value: String,
}

/// What the expansion of [`text_column!`](crate::text_column!) names, so a service needs no
/// direct dependency on these crates.
#[doc(hidden)]
pub mod __private {
    pub use bytes::BytesMut;
    pub use deadpool_sqlite::rusqlite;
    pub use tokio_postgres;
}

/// Implements `FromStr` (its error an [`UnknownState`] of `$kind`) and the `ToSql`/`FromSql`
/// of rusqlite and of tokio-postgres for `$ty`, a `Copy` enum with `ALL` (every variant) and
/// `fn as_str(self) -> &'static str` (what the column holds). A value the enum does not know is
/// a conversion error.
#[macro_export]
macro_rules! text_column {
    ($ty:ty, $kind:literal) => {
        impl ::std::str::FromStr for $ty {
            type Err = $crate::text_column::UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|state| state.as_str() == s)
                    .ok_or_else(|| $crate::text_column::UnknownState {
                        kind: $kind,
                        value: s.to_owned(),
                    })
            }
        }

        impl $crate::text_column::__private::rusqlite::ToSql for $ty {
            fn to_sql(
                &self,
            ) -> $crate::text_column::__private::rusqlite::Result<
                $crate::text_column::__private::rusqlite::types::ToSqlOutput<'_>,
            > {
                Ok(self.as_str().into())
            }
        }

        impl $crate::text_column::__private::rusqlite::types::FromSql for $ty {
            fn column_result(
                value: $crate::text_column::__private::rusqlite::types::ValueRef<'_>,
            ) -> $crate::text_column::__private::rusqlite::types::FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e| {
                    $crate::text_column::__private::rusqlite::types::FromSqlError::Other(Box::new(e))
                })
            }
        }

        impl $crate::text_column::__private::tokio_postgres::types::ToSql for $ty {
            fn to_sql(
                &self,
                ty: &$crate::text_column::__private::tokio_postgres::types::Type,
                out: &mut $crate::text_column::__private::BytesMut,
            ) -> Result<
                $crate::text_column::__private::tokio_postgres::types::IsNull,
                Box<dyn std::error::Error + Sync + Send>,
            > {
                <&str as $crate::text_column::__private::tokio_postgres::types::ToSql>::to_sql(
                    &self.as_str(),
                    ty,
                    out,
                )
            }

            fn accepts(ty: &$crate::text_column::__private::tokio_postgres::types::Type) -> bool {
                <&str as $crate::text_column::__private::tokio_postgres::types::ToSql>::accepts(ty)
            }

            $crate::text_column::__private::tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> $crate::text_column::__private::tokio_postgres::types::FromSql<'a> for $ty {
            fn from_sql(
                ty: &$crate::text_column::__private::tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text =
                    <&str as $crate::text_column::__private::tokio_postgres::types::FromSql>::from_sql(
                        ty, raw,
                    )?;
                Ok(text.parse()?)
            }

            fn accepts(ty: &$crate::text_column::__private::tokio_postgres::types::Type) -> bool {
                <&str as $crate::text_column::__private::tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}
