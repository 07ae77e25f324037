//! States stored as text: [`text_column!`](crate::text_column!) gives an enum its SQL
//! conversions for both backends (rusqlite and tokio-postgres), from its `as_str` and `FromStr`,
//! so a store binds and reads the enum itself, never a string it matches by hand.

/// What the expansion of [`text_column!`](crate::text_column!) names, so a service needs no
/// direct dependency on these crates.
#[doc(hidden)]
pub mod __private {
    pub use bytes::BytesMut;
    pub use deadpool_sqlite::rusqlite;
    pub use tokio_postgres;
}

/// Implements `ToSql`/`FromSql` of rusqlite and of tokio-postgres for `$ty`, a `Copy` enum
/// with `fn as_str(self) -> &'static str` (what the column holds) and a `FromStr` whose error is
/// a `std::error::Error + Send + Sync`. A value the enum does not know is a conversion error
/// (the schema's `CHECK` keeps such values out).
#[macro_export]
macro_rules! text_column {
    ($ty:ty) => {
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
