//! Built-in architectures: a small CNN (sized for 28x28 grey images; other
//! sizes through adaptive pooling) and the CIFAR ResNets (He et al. 2016,
//! 6n + 2 layers) that Cohen et al. certify, also for any input size.
use super::ModelError;
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Two 3x3 conv layers (16, 32 channels) with max-pooling and a 128-unit
    /// hidden layer: about 1.2 M multiply-adds per 28x28 image, small enough
    /// that Monte Carlo with N = 10^4..10^5 stays practical on a CPU.
    SmallCnn,
    ResNet20,
    ResNet110,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["small-cnn", "resnet20", "resnet110"];

    pub fn name(self) -> &'static str {
        match self {
            Arch::SmallCnn => "small-cnn",
            Arch::ResNet20 => "resnet20",
            Arch::ResNet110 => "resnet110",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "small-cnn" => Ok(Arch::SmallCnn),
            "resnet20" => Ok(Arch::ResNet20),
            "resnet110" => Ok(Arch::ResNet110),
            other => Err(ModelError::UnknownArch(
                other.to_string(),
                Self::NAMES.join(", "),
            )),
        }
    }

    /// Builds the network's variables under `root`; input [B, C, H, W], output logits [B, classes].
    pub fn build(
        self,
        root: &nn::Path,
        shape: [usize; 3],
        classes: usize,
    ) -> Result<Box<dyn ModuleT>, ModelError> {
        let [c, h, w] = shape.map(|d| d as i64);
        let k = classes as i64;
        match self {
            Arch::SmallCnn => {
                if h < 4 || w < 4 {
                    return Err(ModelError::Bundle(format!(
                        "small-cnn needs images of at least 4x4, got {h}x{w}"
                    )));
                }
                Ok(Box::new(small_cnn(root, c, h, w, k)))
            }
            Arch::ResNet20 => Ok(Box::new(cifar_resnet(root, c, k, 3))),
            Arch::ResNet110 => Ok(Box::new(cifar_resnet(root, c, k, 18))),
        }
    }
}

fn conv3x3(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: 1,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, 3, cfg)
}

/// The grid small-cnn's head reads for sizes not divisible by 4: what two
/// poolings leave of a 28x28 image.
const SMALL_CNN_GRID: i64 = 7;

fn small_cnn(p: &nn::Path, c: i64, h: i64, w: i64, classes: i64) -> nn::SequentialT {
    let pad = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    // H and W divisible by 4: the head reads the whole (H/4 x W/4) map, as
    // small-cnn always has, so bundles trained before load unchanged. Any
    // other size is pooled adaptively to the 28x28 network's 7x7 grid.
    let (gh, gw, adaptive) = if h % 4 == 0 && w % 4 == 0 {
        (h / 4, w / 4, false)
    } else {
        (SMALL_CNN_GRID, SMALL_CNN_GRID, true)
    };
    nn::seq_t()
        .add(nn::conv2d(p / "conv1", c, 16, 3, pad))
        .add_fn(|x| x.relu().max_pool2d_default(2))
        .add(nn::conv2d(p / "conv2", 16, 32, 3, pad))
        .add_fn(move |x| {
            let x = x.relu().max_pool2d_default(2);
            let x = if adaptive {
                x.adaptive_avg_pool2d([gh, gw])
            } else {
                x
            };
            x.flatten(1, -1)
        })
        .add(nn::linear(p / "fc1", 32 * gh * gw, 128, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc2", 128, classes, Default::default()))
}

/// Basic residual block; a 1x1 projection on the shortcut when the shape changes.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| {
            let cfg = nn::ConvConfig {
                stride,
                bias: false,
                ..Default::default()
            };
            (
                nn::conv2d(&p / "down_conv", cin, cout, 1, cfg),
                nn::batch_norm2d(&p / "down_bn", cout, Default::default()),
            )
        });
        BasicBlock {
            conv1: conv3x3(&p / "conv1", cin, cout, stride),
            bn1: nn::batch_norm2d(&p / "bn1", cout, Default::default()),
            conv2: conv3x3(&p / "conv2", cout, cout, 1),
            bn2: nn::batch_norm2d(&p / "bn2", cout, Default::default()),
            shortcut,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let skip = match &self.shortcut {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        (out + skip).relu()
    }
}

fn cifar_resnet(p: &nn::Path, c: i64, classes: i64, blocks_per_stage: usize) -> nn::SequentialT {
    let mut net = nn::seq_t()
        .add(conv3x3(p / "conv1", c, 16, 1))
        .add(nn::batch_norm2d(p / "bn1", 16, Default::default()))
        .add_fn(|x| x.relu());
    let mut cin = 16;
    for (stage, cout) in [16i64, 32, 64].into_iter().enumerate() {
        for b in 0..blocks_per_stage {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let name = format!("layer{}_{}", stage + 1, b);
            net = net.add(BasicBlock::new(p / name.as_str(), cin, cout, stride));
            cin = cout;
        }
    }
    net.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(p / "fc", 64, classes, Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn params(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Every built-in architecture takes any C x H x W a bundle may declare.
    #[test]
    fn any_input_shape() {
        let _rng = crate::testing::rng_lock();
        for arch in [Arch::SmallCnn, Arch::ResNet20] {
            for shape in [[3, 18, 30], [1, 28, 28], [3, 64, 48], [1, 5, 9]] {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = arch.build(&vs.root(), shape, 4).unwrap();
                let [c, h, w] = shape.map(|d| d as i64);
                let x = Tensor::rand([2, c, h, w], (Kind::Float, Device::Cpu));
                let y = tch::no_grad(|| net.forward_t(&x, false));
                assert_eq!(y.size(), vec![2, 4], "{} on {shape:?}", arch.name());
            }
        }
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(Arch::SmallCnn.build(&vs.root(), [1, 3, 28], 4).is_err());
    }

    /// On 28x28 inputs (H, W divisible by 4) the network is the earlier
    /// fixed-size one, so bundles trained before load unchanged.
    #[test]
    fn small_cnn_on_28x28_is_the_fixed_size_network() {
        let _rng = crate::testing::rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Arch::SmallCnn.build(&vs.root(), [1, 28, 28], 10).unwrap();
        let v = vs.variables();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let conv = |x: &Tensor, name: &str| {
            x.conv2d(
                &v[&format!("{name}.weight")],
                Some(&v[&format!("{name}.bias")]),
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            )
        };
        let expected = tch::no_grad(|| {
            let h = conv(&x, "conv1").relu().max_pool2d_default(2);
            let h = conv(&h, "conv2")
                .relu()
                .max_pool2d_default(2)
                .flatten(1, -1);
            let h = h.linear(&v["fc1.weight"], Some(&v["fc1.bias"])).relu();
            h.linear(&v["fc2.weight"], Some(&v["fc2.bias"]))
        });
        let y = tch::no_grad(|| net.forward_t(&x, false));
        assert!(y.allclose(&expected, 1e-6, 1e-6, false));
    }

    #[test]
    fn output_shapes_and_sizes() {
        let _rng = crate::testing::rng_lock();
        for (arch, shape) in [
            (Arch::SmallCnn, [1, 28, 28]),
            (Arch::ResNet20, [3, 32, 32]),
            (Arch::ResNet110, [3, 32, 32]),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = arch.build(&vs.root(), shape, 10).unwrap();
            let x = Tensor::rand([2, shape[0] as i64, 28, 28], (Kind::Float, Device::Cpu));
            let x = if shape[1] == 32 {
                x.upsample_nearest2d([32, 32], None, None)
            } else {
                x
            };
            let y = tch::no_grad(|| net.forward_t(&x, false));
            assert_eq!(y.size(), vec![2, 10], "{}", arch.name());
            let n = params(&vs);
            // ResNet-20 has ~0.27 M parameters and ResNet-110 ~1.7 M (He et al., Table 6);
            // the 1x1 projection shortcuts add a little.
            match arch {
                Arch::SmallCnn => assert!((150_000..300_000).contains(&n), "{n}"),
                Arch::ResNet20 => assert!((260_000..300_000).contains(&n), "{n}"),
                Arch::ResNet110 => assert!((1_700_000..1_800_000).contains(&n), "{n}"),
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for name in Arch::NAMES {
            assert_eq!(Arch::parse(name).unwrap().name(), *name);
        }
        assert!(matches!(
            Arch::parse("vgg"),
            Err(ModelError::UnknownArch(..))
        ));
    }
}
