use super::idx::{IMAGES_MAGIC, LABELS_MAGIC};
use super::*;
use std::io::Write;

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Three 28x28 images with pixel (i, r, c) = (i * 7 + r * 28 + c) mod 256, labels 9, 0, 4.
fn small_fashion(dir: &Path, prefix: &str, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..3 * 28 * 28)
        .map(|k| {
            let (i, rc) = (k / 784, k % 784);
            ((i * 7 + rc) % 256) as u8
        })
        .collect();
    let labels = vec![9u8, 0, 4];
    let images = idx_bytes(IMAGES_MAGIC, &[3, 28, 28], &pixels);
    let label_file = idx_bytes(LABELS_MAGIC, &[3], &labels);
    let (suffix, images, label_file) = if gz {
        (".gz", gzip(&images), gzip(&label_file))
    } else {
        ("", images, label_file)
    };
    std::fs::write(
        dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")),
        images,
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")),
        label_file,
    )
    .unwrap();
    (pixels, labels)
}

#[test]
fn real_fashion_mnist_test_split() {
    let dir = DatasetKind::FashionMnist.default_dir();
    let ds = load(DatasetKind::FashionMnist, &dir, Split::Test).unwrap_or_else(|e| {
        panic!(
            "the real Fashion-MNIST files are needed here (scripts/setup.sh installs \
             dataset-fashion-mnist): {e}"
        )
    });
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.shape, [1, 28, 28]);
    assert_eq!(ds.image_numel(), 784);
    assert_eq!(ds.images.len(), 10_000 * 784);
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.classes[0], "T-shirt/top");
    assert_eq!(ds.classes[9], "Ankle boot");
    let mut per_class = [0usize; 10];
    for &l in &ds.labels {
        per_class[usize::try_from(l).unwrap()] += 1;
    }
    assert_eq!(per_class, [1000; 10]);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &p in &ds.images {
        lo = lo.min(p);
        hi = hi.max(p);
    }
    assert_eq!((lo, hi), (0.0, 1.0));
    // The first test image is an ankle boot (label 9) in every copy of the dataset.
    assert_eq!(ds.labels[0], 9);
    assert_eq!(ds.image(9_999).len(), 784);
}

#[test]
fn fashion_idx_round_trips_gzipped_and_plain() {
    for gz in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (pixels, labels) = small_fashion(dir.path(), "t10k", gz);
        let ds = load_fashion_mnist(dir.path(), Split::Test).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.shape, [1, 28, 28]);
        assert_eq!(
            ds.labels,
            labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>()
        );
        for (k, (&got, &byte)) in ds.images.iter().zip(&pixels).enumerate() {
            assert_eq!(got, byte as f32 / 255.0, "pixel {k} (gz = {gz})");
        }
        // Pixel (i=1, r=2, c=3) sits at 1*784 + 2*28 + 3.
        assert_eq!(ds.image(1)[2 * 28 + 3], (7 + 2 * 28 + 3) as f32 / 255.0);
        // The training split is separate and absent here.
        let err = load_fashion_mnist(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains("train-images-idx3-ubyte"), "{err}");
        assert!(err.to_string().contains("dataset-fashion-mnist"), "{err}");
    }
}

#[test]
fn fashion_idx_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let images_path = dir.path().join("t10k-images-idx3-ubyte");
    let labels_path = dir.path().join("t10k-labels-idx1-ubyte");
    small_fashion(dir.path(), "t10k", false);
    let good_images = std::fs::read(&images_path).unwrap();

    // Truncated data (plain and gzipped): the header promises more than is there.
    std::fs::write(&images_path, &good_images[..good_images.len() - 10]).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");
    let gz = gzip(&good_images);
    std::fs::write(&images_path, &gz[..gz.len() / 2]).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    // Shorter than the header itself.
    std::fs::write(&images_path, &good_images[..6]).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");

    // Trailing bytes are an error too: the length must match the header exactly.
    let mut long = good_images.clone();
    long.push(0);
    std::fs::write(&images_path, &long).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::BadFormat { .. }), "{err}");

    // Swapped files: a labels file where images belong has the wrong magic.
    std::fs::write(&images_path, std::fs::read(&labels_path).unwrap()).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    match &err {
        DataError::BadMagic {
            found, expected, ..
        } => assert_eq!((*found, *expected), (LABELS_MAGIC, IMAGES_MAGIC)),
        other => panic!("expected BadMagic, got {other}"),
    }
    assert!(err.to_string().contains("0x00000801"), "{err}");

    // Wrong image size.
    let pixels = vec![0u8; 2 * 32 * 32];
    std::fs::write(&images_path, idx_bytes(IMAGES_MAGIC, &[2, 32, 32], &pixels)).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(err.to_string().contains("32x32"), "{err}");

    // Image and label counts differ.
    std::fs::write(&images_path, &good_images).unwrap();
    std::fs::write(&labels_path, idx_bytes(LABELS_MAGIC, &[2], &[1, 2])).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{err}"
    );

    // A label outside 0..10.
    std::fs::write(&labels_path, idx_bytes(LABELS_MAGIC, &[3], &[1, 10, 2])).unwrap();
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{err}"
    );
}

/// Five CIFAR records; record j of a file with base b has label (b + j) % 10
/// and pixel k = (b + j + k) % 251 in channel-plane order.
fn cifar_file(base: usize, records: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for j in 0..records {
        out.push(((base + j) % 10) as u8);
        out.extend((0..3072).map(|k| ((base + j + k) % 251) as u8));
    }
    out
}

#[test]
fn cifar10_binary_layout_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), cifar_file(100, 5)).unwrap();
    for i in 1..=5 {
        std::fs::write(
            dir.path().join(format!("data_batch_{i}.bin")),
            cifar_file(i * 10, 2),
        )
        .unwrap();
    }
    let test = load(DatasetKind::Cifar10, dir.path(), Split::Test).unwrap();
    assert_eq!(test.len(), 5);
    assert_eq!(test.shape, [3, 32, 32]);
    assert_eq!(test.classes[0], "airplane");
    assert_eq!(test.labels, vec![0, 1, 2, 3, 4]);
    for j in 0..5 {
        let img = test.image(j);
        // Channel c, row r, column x is file byte c*1024 + r*32 + x of the record.
        for (c, r, x) in [(0, 0, 0), (0, 5, 7), (1, 0, 0), (1, 31, 31), (2, 17, 3)] {
            let k = c * 1024 + r * 32 + x;
            assert_eq!(
                img[k],
                ((100 + j + k) % 251) as f32 / 255.0,
                "{j} {c} {r} {x}"
            );
        }
    }
    let train = load_cifar10(dir.path(), Split::Train).unwrap();
    assert_eq!(train.len(), 10);
    // Files in order 1..5, records in file order.
    assert_eq!(train.labels, vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    assert_eq!(train.image(3)[0], 21.0 / 255.0);

    // The unpacked archive's parent directory works too.
    let parent = tempfile::tempdir().unwrap();
    let nested = parent.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&nested).unwrap();
    std::fs::write(nested.join("test_batch.bin"), cifar_file(0, 1)).unwrap();
    assert_eq!(load_cifar10(parent.path(), Split::Test).unwrap().len(), 1);

    // Errors: a partial record, a bad label, a missing file.
    let mut partial = cifar_file(0, 2);
    partial.truncate(3073 + 100);
    std::fs::write(dir.path().join("test_batch.bin"), partial).unwrap();
    let err = load_cifar10(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("test_batch.bin"), "{err}");
    let mut bad = cifar_file(0, 2);
    bad[3073] = 10;
    std::fs::write(dir.path().join("test_batch.bin"), bad).unwrap();
    let err = load_cifar10(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { index: 1, .. }),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
    let err = load_cifar10(dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn decode_png_and_jpeg() {
    use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
    // Grey PNG: exact v / 255, row-major.
    let grey = GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 60 + y * 5) as u8]));
    let png = encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png);
    let v = decode_image(&png, [1, 3, 4]).unwrap();
    assert_eq!(v.len(), 12);
    assert_eq!(v[2 * 4 + 3], (3 * 60 + 2 * 5) as f32 / 255.0);
    // The same image for an RGB model: three equal planes.
    let v3 = decode_image(&png, [3, 3, 4]).unwrap();
    assert_eq!(&v3[..12], &v[..]);
    assert_eq!(&v3[12..24], &v[..]);
    assert_eq!(&v3[24..], &v[..]);

    // RGB PNG: interleaved pixels become channel planes.
    let rgb = RgbImage::from_fn(5, 2, |x, y| image::Rgb([x as u8 * 10, y as u8 * 100, 255]));
    let png = encode(&DynamicImage::ImageRgb8(rgb), ImageFormat::Png);
    let v = decode_image(&png, [3, 2, 5]).unwrap();
    let plane = 10;
    assert_eq!(v[4], 40.0 / 255.0); // R at (x=4, y=0)
    assert_eq!(v[plane + 5 + 2], 100.0 / 255.0); // G at (x=2, y=1)
    assert!(v[2 * plane..].iter().all(|&b| b == 1.0)); // B everywhere
                                                       // ... and for a grey model, one luminance plane.
    assert_eq!(decode_image(&png, [1, 2, 5]).unwrap().len(), 10);

    // 16-bit PNG keeps its precision.
    let deep = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(2, 2, image::Luma([1000u16]));
    let png16 = encode(&DynamicImage::ImageLuma16(deep), ImageFormat::Png);
    assert_eq!(
        decode_image(&png16, [1, 2, 2]).unwrap(),
        vec![1000.0 / 65535.0; 4]
    );

    // JPEG is lossy: flat colours come back close to what went in.
    let flat = RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]));
    let jpg = encode(&DynamicImage::ImageRgb8(flat), ImageFormat::Jpeg);
    let v = decode_image(&jpg, [3, 8, 16]).unwrap();
    for (c, want) in [200.0f32, 100.0, 50.0].into_iter().enumerate() {
        for &p in &v[c * 128..(c + 1) * 128] {
            assert!((p * 255.0 - want).abs() < 4.0, "channel {c}: {}", p * 255.0);
        }
    }
    let grey_jpg = encode(
        &DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 8, image::Luma([77]))),
        ImageFormat::Jpeg,
    );
    let v = decode_image(&grey_jpg, [1, 8, 8]).unwrap();
    assert!(v.iter().all(|&p| (p * 255.0 - 77.0).abs() < 2.0));

    // Wrong size: an error, never a silent resize.
    let err = decode_image(&jpg, [3, 32, 32]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongImageSize {
                found_w: 16,
                found_h: 8,
                expected_w: 32,
                expected_h: 32,
                ..
            }
        ),
        "{err}"
    );
    // Garbage, and a truncated PNG.
    let err = decode_image(b"definitely not an image", [1, 8, 8]).unwrap_err();
    assert!(matches!(err, DataError::Undecodable { .. }), "{err}");
    let png = encode(
        &DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 8, image::Luma([1]))),
        ImageFormat::Png,
    );
    let err = decode_image(&png[..png.len() - 20], [1, 8, 8]).unwrap_err();
    assert!(matches!(err, DataError::Undecodable { .. }), "{err}");
    // Unsupported channel count.
    let err = decode_image(&png, [2, 8, 8]).unwrap_err();
    assert!(
        matches!(err, DataError::UnsupportedChannels { channels: 2, .. }),
        "{err}"
    );

    // load_image names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    std::fs::write(&path, &png).unwrap();
    assert_eq!(load_image(&path, [1, 8, 8]).unwrap(), vec![1.0 / 255.0; 64]);
    let err = load_image(&path, [1, 9, 9]).unwrap_err();
    assert!(err.to_string().contains("x.png"), "{err}");
    let err = load_image(&dir.path().join("missing.png"), [1, 8, 8]).unwrap_err();
    assert!(err.to_string().contains("missing.png"), "{err}");
}

#[test]
fn names_parse_and_print() {
    for k in DatasetKind::ALL {
        assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        assert_eq!(k.classes().len(), 10);
    }
    assert_eq!(
        "fashion-mnist".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert_eq!(
        "cifar10".parse::<DatasetKind>().unwrap(),
        DatasetKind::Cifar10
    );
    assert!("mnist"
        .parse::<DatasetKind>()
        .unwrap_err()
        .to_string()
        .contains("fashion-mnist"));
    assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
    assert_eq!(Split::Test.to_string(), "test");
    assert!("val".parse::<Split>().is_err());
    // serde names match the command-line names (model.toml uses them).
    assert_eq!(
        serde_json::to_string(&DatasetKind::FashionMnist).unwrap(),
        "\"fashion-mnist\""
    );
    assert_eq!(serde_json::to_string(&Split::Train).unwrap(), "\"train\"");
    assert_eq!(
        serde_json::from_str::<DatasetKind>("\"cifar10\"").unwrap(),
        DatasetKind::Cifar10
    );
    assert_eq!(
        DatasetKind::FashionMnist.default_dir(),
        PathBuf::from("/usr/share/datasets/fashion-mnist")
    );
}
