//! Its own test binary: ONNX Runtime can be loaded once per process, so a bad library must be the first.
mod common;

use rotations::model::onnx::environment;
use rotations::model::ModelError;

#[test]
fn a_file_that_is_not_onnx_runtime_is_a_clear_error_then_the_real_one_loads() {
    let bogus = common::bundled_model_dir().join("model.json");
    match environment(&bogus) {
        Err(ModelError::RuntimeLibrary { path, reason }) => {
            assert_eq!(path, bogus);
            assert!(!reason.is_empty());
        }
        other => panic!("expected RuntimeLibrary error, got {:?}", other.map(|_| ())),
    }
    environment(&common::ort_library()).expect("the fetched library loads after a failed attempt");
}
