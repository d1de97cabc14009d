//! The typed operations, generated from `graphql/operations.graphql`
//! against the Hub's schema (`tests/fixtures/capact-hub/local-schema.graphql`).

#![allow(clippy::all, missing_docs)]

use graphql_client::GraphQLQuery;

// The schema's custom scalars, as graphql_client expects them in scope.
pub type Any = serde_json::Value;
pub type NodePath = String;
pub type Version = String;
pub type LockOwnerID = String;
pub type DateTime = String;

macro_rules! operation {
    ($name:ident) => {
        #[derive(GraphQLQuery)]
        #[graphql(
            schema_path = "../tests/fixtures/capact-hub/local-schema.graphql",
            query_path = "graphql/operations.graphql",
            response_derives = "Debug, Clone",
            variables_derives = "Debug, Clone",
            skip_serializing_none
        )]
        pub struct $name;
    };
}

operation!(ListWithValue);
operation!(ListWithContext);
operation!(LockOf);
operation!(CreateTypeInstance);
operation!(UpdateTypeInstances);
operation!(DeleteTypeInstance);
operation!(LockTypeInstances);
operation!(UnlockTypeInstances);
