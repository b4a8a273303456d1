//! The content-addressed blob store of artifacts: a blob is stored once under its sha256,
//! on the local filesystem (the embedded default) or in an S3-compatible bucket, both
//! through `object_store`.
//!
//! Owns the blob layout (`sha256/<2 hex>/<64 hex>`), streaming in and out with bounded
//! memory, and digest verification. It knows nothing of runs, tenants or permissions: the
//! service decides who may read or write which digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// HTTP header carrying the lease token of the attempt an artifact transfer is for.
pub const LEASE_HEADER: &str = "x-gantry-lease-token";

/// Size of one part of an upload to the store (S3 needs at least 5 MiB but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Buffer of file reads.
const READ_BYTES: usize = 256 * 1024;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("not a sha256 digest: {0:?}")]
    BadDigest(String),
    #[error("artifact store configuration: {0}")]
    Config(String),
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    #[error("artifact spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Where blobs live.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Incoming uploads are spooled here while hashed, before they enter the store.
    spool: PathBuf,
    describe: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// A spooled upload: a local file whose size and digest are known.
#[derive(Debug)]
pub struct Spooled {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn check_digest(d: &str) -> Result<(), BlobError> {
    if d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(BlobError::BadDigest(d.chars().take(80).collect()))
    }
}

impl BlobStore {
    /// Blobs in `dir` on the local filesystem.
    pub fn local(dir: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(dir.join("blobs"))?;
        std::fs::create_dir_all(dir.join("spool"))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.join("blobs"))?;
        Ok(BlobStore {
            store: Arc::new(fs),
            prefix: String::new(),
            spool: dir.join("spool"),
            describe: format!("filesystem {}", dir.display()),
        })
    }

    /// Blobs in an S3-compatible bucket, from a URL `s3://bucket[/prefix]`. Endpoint,
    /// region and credentials come from the standard `AWS_*` environment variables
    /// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, …) or from `options`.
    pub fn s3(url: &str, options: &[(&str, &str)], spool: &Path) -> Result<BlobStore, BlobError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::Config(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BlobError::Config("the s3:// URL names no bucket".into()));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            let key: object_store::aws::AmazonS3ConfigKey = k
                .parse()
                .map_err(|e| BlobError::Config(format!("option {k}: {e}")))?;
            b = b.with_config(key, *v);
        }
        let store = b.build()?;
        std::fs::create_dir_all(spool)?;
        Ok(BlobStore {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            spool: spool.to_path_buf(),
            describe: format!("s3 {url}"),
        })
    }

    fn path(&self, digest: &str) -> Result<ObjectPath, BlobError> {
        check_digest(digest)?;
        let rel = format!("sha256/{}/{}", &digest[..2], digest);
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        })
    }

    /// Whether the blob is stored.
    pub async fn exists(&self, digest: &str) -> Result<bool, BlobError> {
        match self.store.head(&self.path(digest)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a stream to a spool file, hashing it on the way; nothing is held in memory
    /// beyond one chunk.
    pub async fn spool<S, E>(&self, mut body: S) -> Result<Spooled, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.spool.join(format!("upload-{}", uuid::Uuid::now_v7()));
        // Owns the file from here on: an error below removes it.
        let mut spooled = Spooled {
            path: path.clone(),
            size: 0,
            sha256: String::new(),
        };
        let mut file = tokio::fs::File::create(&path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                BlobError::Io(std::io::Error::other(format!("upload interrupted: {e}")))
            })?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        spooled.size = size;
        spooled.sha256 = hex::encode(hasher.finalize());
        Ok(spooled)
    }

    /// Stores a local file under `digest` (verified while it streams) unless a blob with
    /// that digest is stored already: the same content is stored once.
    pub async fn put_file(&self, digest: &str, file: &Path) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        if self.exists(digest).await? {
            return Ok(());
        }
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut f = tokio::fs::File::open(file).await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.wait_for_capacity(2).await?;
            writer.write(&buf[..n]);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            writer.abort().await?;
            return Err(BlobError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        writer.finish().await?;
        Ok(())
    }

    /// The blob's content as a stream of chunks.
    pub async fn get(
        &self,
        digest: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        match self.store.get(&self.path(digest)?).await {
            Ok(r) => Ok(r.into_stream().map_err(BlobError::from).boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(digest.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies the blob into a local file, verifying its digest.
    pub async fn get_to_file(&self, digest: &str, dest: &Path) -> Result<u64, BlobError> {
        let stream = self.get(digest).await?;
        write_verified(stream, digest, dest).await
    }

    /// Deletes a blob; deleting a missing one is not an error.
    pub async fn delete(&self, digest: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(digest)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes a stream to `dest` while hashing it; fails (and removes `dest`) when the content
/// does not match `digest`.
pub async fn write_verified<S, E>(
    mut stream: S,
    digest: &str,
    dest: &Path,
) -> Result<u64, BlobError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            BlobError::Io(std::io::Error::other(format!("download interrupted: {e}")))
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        drop(file);
        let _ = tokio::fs::remove_file(dest).await;
        return Err(BlobError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(size)
}
