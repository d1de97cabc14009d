//! The operator-only admin service (`proto/admin.proto`): lock listing and
//! force-unlock, served on its own listener (APP_ADMIN_ADDR), never beside
//! the Hub's services.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    Backend, Owner, TypeInstanceId,
    proto::admin::{
        ForceUnlockRequest, ForceUnlockResponse, ListLocksRequest, ListLocksResponse, Lock,
        storage_admin_server::StorageAdmin,
    },
};

pub struct Admin<B> {
    backend: Arc<B>,
}

impl<B> Admin<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }
}

#[tonic::async_trait]
impl<B: Backend> StorageAdmin for Admin<B> {
    async fn list_locks(
        &self,
        _request: Request<ListLocksRequest>,
    ) -> Result<Response<ListLocksResponse>, Status> {
        let name = self.backend.describe().name;
        let locks = self
            .backend
            .list_locks()
            .await
            .map_err(|e| e.to_status(name))?;
        Ok(Response::new(ListLocksResponse {
            locks: locks
                .into_iter()
                .map(|l| Lock {
                    type_instance_id: l.id.as_str().to_owned(),
                    owner: l.owner,
                    locked_at_unix_ms: l.locked_at,
                })
                .collect(),
        }))
    }

    async fn force_unlock(
        &self,
        request: Request<ForceUnlockRequest>,
    ) -> Result<Response<ForceUnlockResponse>, Status> {
        let name = self.backend.describe().name;
        let r = request.into_inner();
        let id = TypeInstanceId::parse(&r.type_instance_id).map_err(|e| e.to_status(name))?;
        let owner = Owner::parse(&r.expected_owner).map_err(|e| e.to_status(name))?;
        self.backend
            .force_unlock(&id, &owner)
            .await
            .map_err(|e| e.to_status(name))?;
        Ok(Response::new(ForceUnlockResponse {}))
    }
}
