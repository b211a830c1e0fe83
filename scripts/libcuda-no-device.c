/* A stand-in for the NVIDIA driver's libcuda.so.1 on a machine where the driver is installed but no GPU is
 * visible (e.g. a container given the driver's libraries but no device): the driver reports CUDA 13.0 and
 * every call into it fails with CUDA_ERROR_NO_DEVICE, as the real driver's cuInit does then.
 * scripts/docker-test (VARIANT=cuda) builds it and checks that `--execution-provider auto` falls back to the
 * CPU when the CUDA session cannot start, and that `cuda` refuses to start.
 *   cc -shared -fPIC -o libcuda.so.1 scripts/libcuda-no-device.c
 * Exports the driver functions that the CUDA provider, cuDNN and the CUDA runtime import or look up. */
#include <string.h>

typedef int CUresult;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_NO_DEVICE = 100 };

static CUresult no_device(void) { return CUDA_ERROR_NO_DEVICE; }

CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_NO_DEVICE; }

CUresult cuDriverGetVersion(int *version) {
  *version = 13000;
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
  *text = error == CUDA_ERROR_NO_DEVICE ? "no CUDA-capable device is detected" : "unknown error";
  return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
  *name = error == CUDA_ERROR_NO_DEVICE ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN";
  return CUDA_SUCCESS;
}

/* The CUDA runtime reaches every driver function through this; all but the ones above fail. */
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags, int *status) {
  (void)version; (void)flags;
  if (strcmp(symbol, "cuDriverGetVersion") == 0) *pfn = (void *)cuDriverGetVersion;
  else if (strcmp(symbol, "cuGetErrorString") == 0) *pfn = (void *)cuGetErrorString;
  else if (strcmp(symbol, "cuGetErrorName") == 0) *pfn = (void *)cuGetErrorName;
  else if (strcmp(symbol, "cuGetProcAddress") == 0) *pfn = (void *)cuGetProcAddress_v2;
  else *pfn = (void *)no_device;
  if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
  return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, 0);
}

/* Imported directly by the CUDA provider and cuDNN. */
CUresult cuModuleLoadData(void) { return no_device(); }
CUresult cuModuleGetFunction(void) { return no_device(); }
CUresult cuModuleUnload(void) { return no_device(); }
CUresult cuTensorMapEncodeTiled(void) { return no_device(); }
CUresult cuTensorMapEncodeIm2col(void) { return no_device(); }
