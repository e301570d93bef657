//! The Contact Export protocol: types and client/server stubs generated from
//! `proto/contactexport/v1`, and the descriptor set served by gRPC reflection.

/// `contactexport.v1`: the export service and its messages.
pub mod v1 {
    tonic::include_proto!("contactexport.v1");
}

/// Encoded `FileDescriptorSet` of the protocol, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("contactexport_descriptor");
