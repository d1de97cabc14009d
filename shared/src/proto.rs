//! Generated code for the Hub's protocol and our `BackendInfo` side channel.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod storage_backend {
    tonic::include_proto!("storage_backend");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod info {
    tonic::include_proto!("capact_storage.info.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin {
    tonic::include_proto!("capact_storage.admin.v1");
}

/// Encoded `FileDescriptorSet` of the protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Fully qualified gRPC service names, as health checks and reflection see them.
pub const VALUE_SERVICE: &str = "storage_backend.ValueAndContextStorageBackend";
pub const CONTEXT_SERVICE: &str = "storage_backend.ContextStorageBackend";
pub const INFO_SERVICE: &str = "capact_storage.info.v1.BackendInfo";
pub const ADMIN_SERVICE: &str = "capact_storage.admin.v1.StorageAdmin";
