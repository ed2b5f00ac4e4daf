-- Cameras of the decoder: configuration and scene geometry (CameraService).
-- The source URI is stored sealed (AES-256-GCM, nonce || ciphertext || tag) under the key
-- named by source_key_id, so a leaked dump or backup does not leak camera credentials;
-- source_masked is the form every response shows, so reads never decrypt.
CREATE TABLE decoder_cameras (
    camera_id      text             PRIMARY KEY,
    display_name   text             NOT NULL DEFAULT '',
    source_masked  text             NOT NULL,
    source_key_id  text             NOT NULL,
    source_sealed  bytea            NOT NULL,
    enabled        boolean          NOT NULL DEFAULT false,
    loop           boolean          NOT NULL DEFAULT false,
    target_fps     double precision NOT NULL DEFAULT 0,
    width          integer          NOT NULL DEFAULT 0,
    height         integer          NOT NULL DEFAULT 0,
    -- lines, zones, lanes and calibration as the proto's JSON (an its.camera.v1.Camera
    -- holding only those fields): read whole, never queried field by field.
    scene          jsonb            NOT NULL DEFAULT '{}'::jsonb,
    etag           text             NOT NULL,
    create_time    timestamptz      NOT NULL DEFAULT now(),
    update_time    timestamptz      NOT NULL DEFAULT now()
);
-- The orderings ListCameras offers besides the primary key (AIP-132 order_by).
CREATE INDEX decoder_cameras_display_name_idx ON decoder_cameras (display_name, camera_id);
CREATE INDEX decoder_cameras_create_time_idx ON decoder_cameras (create_time, camera_id);
CREATE INDEX decoder_cameras_update_time_idx ON decoder_cameras (update_time, camera_id);
-- Key rotation re-seals the rows still under an old key.
CREATE INDEX decoder_cameras_source_key_id_idx ON decoder_cameras (source_key_id);
