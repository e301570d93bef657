//! The ids of the domain, each a type of its own, so that a workspace's id cannot be passed
//! where an export's is expected (`repo::get(conn, workspace, export)` does not compile with
//! the two swapped). Stored as PostgreSQL `uuid`; shown as their UUID.

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Uuid as SqlUuid;
use uuid::Uuid;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            AsExpression,
            FromSqlRow,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[diesel(sql_type = SqlUuid)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random id (v4).
            pub fn new_random() -> Self {
                $name(Uuid::new_v4())
            }

            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                $name(id)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ToSql<SqlUuid, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                <Uuid as ToSql<SqlUuid, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<SqlUuid, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                <Uuid as FromSql<SqlUuid, Pg>>::from_sql(bytes).map($name)
            }
        }
    };
}

id!(
    /// A CRM workspace: every export, token and query belongs to one.
    WorkspaceId
);
id!(
    /// A CRM user: who asked for an export (and gets its mail).
    UserId
);
id!(
    /// An export (and its job).
    ExportId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_show_and_serialise_as_their_uuid() {
        let id = ExportId(Uuid::max());
        assert_eq!(id.to_string(), "ffffffff-ffff-ffff-ffff-ffffffffffff");
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!("ffffffff-ffff-ffff-ffff-ffffffffffff")
        );
        assert_eq!(WorkspaceId::from(Uuid::nil()).as_uuid(), Uuid::nil());
    }
}
