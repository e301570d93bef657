//! Creating a cluster: `initdb` on an empty data folder.

use super::binaries::Binaries;
use super::error::ClusterError;
use super::layout::Layout;
use super::os_user::{DB_SUPERUSER, Owner, owner_command};

/// Creates the cluster in `layout.pgdata` with `initdb`, as the user PostgreSQL runs as: the
/// superuser [`DB_SUPERUSER`], `trust` authentication, UTF-8 and the C locale.
pub(super) fn init_cluster(
    bins: &Binaries,
    layout: &Layout,
    owner: Option<&Owner>,
) -> Result<(), ClusterError> {
    tracing::info!(data_dir = %layout.pgdata.display(), "creating a PostgreSQL cluster (initdb)");
    let output = owner_command(&bins.initdb, owner, &layout.root)
        .arg("-D")
        .arg(&layout.pgdata)
        .args([
            "-U",
            DB_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(ClusterError::io("running", &bins.initdb))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ClusterError::Initdb {
            data_dir: layout.pgdata.clone(),
            status: output.status,
            output: text,
        });
    }
    Ok(())
}
