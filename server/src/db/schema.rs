//! Diesel table definitions: our own tables (see `migrations/`) and the CRM tables we read.

diesel::table! {
    exports (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        user_id -> Uuid,
        status -> Text,
        filename -> Text,
        tag_ids -> Array<Uuid>,
        options -> Jsonb,
        request_id -> Nullable<Text>,
        total_rows -> BigInt,
        processed_rows -> BigInt,
        current_step -> Text,
        attempt -> Integer,
        error_message -> Nullable<Text>,
        storage_key -> Nullable<Text>,
        size_bytes -> Nullable<BigInt>,
        sha256 -> Nullable<Text>,
        job_done -> Bool,
        cancel_requested -> Bool,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        request -> Nullable<Jsonb>,
        lease_generation -> BigInt,
        objects_swept -> Bool,
        needs_mailer -> Bool,
        deleted_at -> Nullable<Timestamptz>,
        expires_at -> Nullable<Timestamptz>,
        notify_url -> Nullable<Text>,
        webhook_due -> Nullable<Text>,
    }
}

diesel::table! {
    export_steps (export_id, step) {
        export_id -> Uuid,
        step -> Text,
        status -> Text,
        attempts -> Integer,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        worker -> Nullable<Text>,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        failures -> Integer,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Uuid,
        token_sha256 -> Text,
        workspace_id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

// The CRM's tables: read only.

diesel::table! {
    workspaces (id) {
        id -> Uuid,
        name -> Text,
        notifications_enabled -> Bool,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        name -> Text,
        email -> Nullable<Text>,
    }
}

diesel::table! {
    tags (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        name -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    exports,
    export_steps,
    api_tokens,
    workspaces,
    users,
    tags
);
