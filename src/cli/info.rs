//! `smoothcert info`.
use anyhow::Result;
use smoothcert::model::cuda_status;

/// Print libtorch, CUDA and thread information.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {}

impl InfoArgs {
    pub fn run(self) -> Result<()> {
        let cuda = cuda_status();
        println!("smoothcert {}", env!("CARGO_PKG_VERSION"));
        println!("intra-op threads: {}", tch::get_num_threads());
        println!(
            "cuda available: {} ({} device(s)); {}",
            cuda.available, cuda.device_count, cuda.detail
        );
        println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
        Ok(())
    }
}
