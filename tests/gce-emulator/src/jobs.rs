//! Boot mode's work: the API answers at once, as GCE does; the QEMU work a request queued
//! ([`Job`]) runs in a task, and the operation stays RUNNING until it ends (DONE with an error
//! if it failed). Also the copy of the VMs' serial output and status into the instances.

use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use cos_customizer_core::backend::{Backend, DiskId, VmId, VmStatus};

use crate::boot::{remove_file, Boot, Job};
use crate::model::State;
use crate::ops;

/// Runs the work queued by the last request, each job in its own task.
pub(crate) fn spawn(shared: &Arc<Mutex<State>>, jobs: Vec<(String, Job)>) {
    for (op, job) in jobs {
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = run(&shared, job).await;
            let error = result.err().map(|e| {
                (
                    "EMULATOR_QEMU_ERROR".to_string(),
                    format!("boot mode: {e:#}"),
                    500,
                )
            });
            ops::work_done(&mut shared.lock().expect("state lock"), &op, error);
        });
    }
}

fn boot_of(shared: &Mutex<State>) -> anyhow::Result<Arc<Boot>> {
    shared
        .lock()
        .expect("state lock")
        .boot
        .clone()
        .ok_or_else(|| anyhow!("the emulator has stopped"))
}

fn disk_id(state: &State, path: &str) -> anyhow::Result<DiskId> {
    state
        .boot_disks
        .get(path)
        .cloned()
        .ok_or_else(|| anyhow!("disk {path} is not ready (its insert operation is not DONE)"))
}

async fn run(shared: &Mutex<State>, job: Job) -> anyhow::Result<()> {
    let boot = boot_of(shared)?;
    let qemu = &boot.backend;
    match job {
        Job::CreateDisk { path, spec } => match qemu.create_disk(&spec).await {
            Ok(id) => {
                let gone = {
                    let mut state = shared.lock().expect("state lock");
                    let gone = !state.store.disks.contains_key(&path);
                    if !gone {
                        state.boot_disks.insert(path, id.clone());
                    }
                    gone
                };
                if gone {
                    qemu.delete_disk(&id).await?;
                }
                Ok(())
            }
            Err(e) => {
                shared.lock().expect("state lock").store.disks.remove(&path);
                Err(e)
            }
        },
        Job::CreateVm {
            path,
            mut spec,
            disks,
        } => {
            let made = async {
                spec.disks = {
                    let state = shared.lock().expect("state lock");
                    disks
                        .iter()
                        .map(|d| disk_id(&state, d))
                        .collect::<anyhow::Result<_>>()?
                };
                qemu.create_vm(&spec).await
            }
            .await;
            let vm = match made {
                Ok(vm) => vm,
                Err(e) => {
                    shared
                        .lock()
                        .expect("state lock")
                        .store
                        .instances
                        .remove(&path);
                    return Err(e);
                }
            };
            let gone = {
                let mut state = shared.lock().expect("state lock");
                match state.store.instances.get_mut(&path) {
                    Some(instance) => {
                        instance.vm = Some(vm.clone());
                        false
                    }
                    None => true,
                }
            };
            if gone {
                qemu.delete_vm(&vm).await?;
            }
            Ok(())
        }
        Job::SetMetadata { path, items } => {
            let vm = shared
                .lock()
                .expect("state lock")
                .store
                .instances
                .get(&path)
                .and_then(|i| i.vm.clone())
                .ok_or_else(|| anyhow!("instance {path} has no running VM"))?;
            for (key, value) in items {
                qemu.set_metadata(&vm, &key, &value).await?;
            }
            Ok(())
        }
        Job::ResizeDisk { path, size_gb } => {
            let id = disk_id(&shared.lock().expect("state lock"), &path)?;
            qemu.resize_disk(&id, size_gb).await
        }
        Job::CreateImage { path, disk, out } => {
            let made = async {
                let id = disk_id(&shared.lock().expect("state lock"), &disk)?;
                qemu.create_image(&id, &out).await
            }
            .await;
            let file = out.local_file.map(|(f, _)| f);
            let mut state = shared.lock().expect("state lock");
            match (made, state.store.images.get_mut(&path)) {
                (Ok(()), Some(image)) => {
                    image.file = file;
                    Ok(())
                }
                (made, _) => {
                    state.store.images.remove(&path);
                    if let Some(f) = file {
                        remove_file(&f);
                    }
                    made
                }
            }
        }
        Job::DeleteVm { vm, disks } => {
            if let Some(vm) = vm {
                qemu.delete_vm(&vm).await?;
            }
            for disk in disks {
                qemu.delete_disk(&disk).await?;
            }
            Ok(())
        }
        Job::DeleteDisk { disk } => match disk {
            Some(disk) => qemu.delete_disk(&disk).await,
            None => Ok(()),
        },
        Job::StopVm { path } => {
            let vm = shared
                .lock()
                .expect("state lock")
                .store
                .instances
                .get_mut(&path)
                .and_then(|i| i.vm.take());
            if let Some(vm) = vm {
                qemu.delete_vm(&vm).await?;
            }
            if let Some(i) = shared
                .lock()
                .expect("state lock")
                .store
                .instances
                .get_mut(&path)
            {
                i.status = "TERMINATED";
            }
            Ok(())
        }
    }
}

/// Copies new serial output of the RUNNING instances (only `only`, if given) from their VMs,
/// and turns an instance whose VM has ended TERMINATED, with the reason of a failure as its
/// `statusMessage`.
pub(crate) async fn refresh(shared: &Mutex<State>, only: Option<&str>) {
    let Some(boot) = shared.lock().expect("state lock").boot.clone() else {
        return;
    };
    let _one_at_a_time = boot.refresh.lock().await;
    let targets: Vec<(String, VmId, [u64; 4])> = {
        let state = shared.lock().expect("state lock");
        state
            .store
            .instances
            .iter()
            .filter(|(path, i)| {
                matches!(i.status, "RUNNING" | "STAGING") && only.is_none_or(|o| o == *path)
            })
            .filter_map(|(path, i)| Some((path.clone(), i.vm.clone()?, i.vm_read)))
            .collect()
    };
    for (path, vm, mut read) in targets {
        // The status first: output written before the VM stopped is then all in the files.
        let status = boot.backend.vm_status(&vm).await;
        let mut output: [Vec<u8>; 4] = Default::default();
        for port in 1..=4u8 {
            let i = usize::from(port - 1);
            while let Ok(chunk) = boot.backend.serial_output(&vm, port, read[i]).await {
                if chunk.next <= read[i] {
                    break;
                }
                output[i].extend_from_slice(chunk.contents.as_bytes());
                read[i] = chunk.next;
            }
        }
        let mut state = shared.lock().expect("state lock");
        let Some(instance) = state.store.instances.get_mut(&path) else {
            continue;
        };
        if instance.vm.as_ref() != Some(&vm) {
            continue;
        }
        for (buffer, bytes) in instance.serial.iter_mut().zip(&output) {
            buffer.push(bytes);
        }
        instance.vm_read = read;
        // A guest's poweroff goes through GCE's stop: STOPPING, now and then DEPROVISIONING,
        // TERMINATED, one GET each.
        match status {
            Ok(VmStatus::Running | VmStatus::Unrecognized(_)) | Err(_) => {}
            Ok(VmStatus::Stopped) => {
                let deprovisioning = state.stop_deprovisions();
                let polls = state.settings.stop_polls;
                if let Some(i) = state.store.instances.get_mut(&path) {
                    i.begin_stop(polls, deprovisioning);
                }
            }
            Ok(VmStatus::Failed(why)) => {
                instance.status = "TERMINATED";
                instance.json.insert("statusMessage".into(), why.into());
            }
        }
    }
}
