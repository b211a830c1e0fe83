//! Which ONNX Runtime execution provider runs the graph: registering it, opening the session on it, and
//! the errors a user sees when CUDA cannot run (no driver, no GPU, a missing CUDA library).
use std::path::Path;

use ort::session::builder::SessionBuilder;
use ort::session::Session;

use super::{ExecutionProvider, ModelError};

/// Registers the provider and creates the session. `auto` falls back to the CPU both when CUDA does
/// not register (no driver: libcuda.so.1 missing) and when its session does not start (a driver but
/// no usable GPU fails only there); the log says why. Returns the provider that runs the session.
pub fn open_session(
    builder: SessionBuilder,
    onnx: &Path,
    provider: ExecutionProvider,
) -> Result<(Session, &'static str), ModelError> {
    let cpu_fallback = (provider == ExecutionProvider::Auto).then(|| builder.clone());
    let (mut builder, registered) = register_provider(builder, provider)?;
    match (builder.commit_from_file(onnx), cpu_fallback) {
        (Ok(session), _) => Ok((session, registered)),
        (Err(e), Some(mut cpu)) if registered == "cuda" => {
            tracing::warn!(
                reason = ort_reason(&e.to_string()),
                "the CUDA session did not start; execution provider: cpu"
            );
            Ok((cpu.commit_from_file(onnx)?, "cpu"))
        }
        (Err(e), _) if registered == "cuda" && e.to_string().contains("CUDA failure") => {
            Err(cuda_unavailable(&e.to_string()))
        }
        (Err(e), _) => Err(e.into()),
    }
}

#[cfg(feature = "cuda")]
fn register_provider(
    mut builder: SessionBuilder,
    provider: ExecutionProvider,
) -> Result<(SessionBuilder, &'static str), ModelError> {
    use ort::ep::ExecutionProvider as _;
    match provider {
        ExecutionProvider::Cpu => Ok((builder, "cpu")),
        ExecutionProvider::Cuda => {
            ort::ep::CUDA::default().register(&mut builder).map_err(|e| cuda_unavailable(&e.to_string()))?;
            Ok((builder, "cuda"))
        }
        ExecutionProvider::Auto => match ort::ep::CUDA::default().register(&mut builder) {
            Ok(()) => {
                tracing::info!("execution provider: cuda");
                Ok((builder, "cuda"))
            }
            Err(e) => {
                tracing::warn!(reason = ort_reason(&e.to_string()), "CUDA did not register; execution provider: cpu");
                Ok((builder, "cpu"))
            }
        },
    }
}

#[cfg(not(feature = "cuda"))]
fn register_provider(
    builder: SessionBuilder,
    provider: ExecutionProvider,
) -> Result<(SessionBuilder, &'static str), ModelError> {
    match provider {
        ExecutionProvider::Cpu => Ok((builder, "cpu")),
        ExecutionProvider::Cuda => Err(ModelError::ProviderUnavailable {
            provider: "cuda",
            reason: "this binary was built without the `cuda` cargo feature".into(),
        }),
        ExecutionProvider::Auto => {
            tracing::info!("execution provider: cpu (built without the `cuda` feature)");
            Ok((builder, "cpu"))
        }
    }
}

/// Why CUDA cannot run, in ONNX Runtime's words without its source locations, and what to do about it.
fn cuda_unavailable(message: &str) -> ModelError {
    let reason = ort_reason(message);
    let hint = if reason.contains("libcuda.so.1") {
        "no NVIDIA driver is visible to this process (libcuda.so.1 is the driver's library): on a GPU machine \
         run the container with `--gpus all` (NVIDIA Container Toolkit)"
    } else if reason.contains("CUDA failure") {
        "the NVIDIA driver is loaded but CUDA cannot use a GPU: check `nvidia-smi` and the devices the \
         container was given (--gpus, NVIDIA_VISIBLE_DEVICES)"
    } else if reason.contains("cannot open shared object file") {
        "a CUDA 13 or cuDNN 9 library is missing: scripts/fetch-cuda-libs fetches them (LD_LIBRARY_PATH)"
    } else {
        "see ONNX Runtime's reason"
    };
    ModelError::ProviderUnavailable {
        provider: "cuda",
        reason: format!("{reason} -- {hint}; --execution-provider auto falls back to the CPU"),
    }
}

/// The part of an ONNX Runtime error message a user can act on: its CUDA failure ("CUDA failure 100: no
/// CUDA-capable device is detected"), else the text after the "[ONNXRuntimeError] : 1 : FAIL : " prefix.
fn ort_reason(message: &str) -> &str {
    if let Some(start) = message.find("CUDA failure") {
        let cuda = &message[start..];
        return cuda.split(" ; ").next().unwrap_or(cuda).trim_end();
    }
    match message.find("[ONNXRuntimeError] : ") {
        Some(start) => message[start..].splitn(4, " : ").nth(3).unwrap_or(message).trim_end(),
        None => message.trim_end(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Messages as ONNX Runtime 1.31.1 (onnxruntime-gpu) gives them on a machine without a GPU.
    const NO_DRIVER: &str = "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 \
        onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to \
        load library /usr/local/lib/libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open \
        shared object file: No such file or directory\n";
    const NO_DEVICE: &str = "/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:154 \
        std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, \
        const char*, SUCCTYPE, const char*, const char*, int) [with ERRTYPE = cudaError; bool THRW = true] \
        CUDA failure 100: no CUDA-capable device is detected ; GPU=-1 ; hostname=vm ; \
        file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_execution_provider.cc ; line=355 ; \
        expr=cudaSetDevice(info_.device_id); \n";

    #[test]
    fn reasons_drop_source_locations() {
        assert_eq!(
            ort_reason(NO_DRIVER),
            "Failed to load library /usr/local/lib/libonnxruntime_providers_cuda.so with error: libcuda.so.1: \
             cannot open shared object file: No such file or directory"
        );
        assert_eq!(ort_reason(NO_DEVICE), "CUDA failure 100: no CUDA-capable device is detected");
        assert_eq!(ort_reason("plain message\n"), "plain message");
    }

    #[test]
    fn each_cause_has_its_hint() {
        let text = |m: &str| cuda_unavailable(m).to_string();
        let no_driver = text(NO_DRIVER);
        assert!(no_driver.starts_with("execution provider cuda is unavailable: Failed to load library"), "{no_driver}");
        assert!(no_driver.contains("--gpus all") && no_driver.ends_with("auto falls back to the CPU"), "{no_driver}");
        let no_device = text(NO_DEVICE);
        assert!(no_device.contains("no CUDA-capable device is detected -- the NVIDIA driver is loaded"), "{no_device}");
        let no_cudnn = text("[ONNXRuntimeError] : 1 : FAIL : libcudnn.so.9: cannot open shared object file");
        assert!(no_cudnn.contains("scripts/fetch-cuda-libs"), "{no_cudnn}");
    }
}
