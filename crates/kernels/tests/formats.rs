//! GPTQ and AWQ pack/unpack: known answers and round trips.

use proptest::prelude::*;
use qwen3_quant_kernels::{awq_format, gptq_format, KernelError};

/// 32 three-bit values used by the hand-written known answer.
fn v3() -> Vec<u8> {
    (0..32).map(|i| ((i * 5 + 3) % 8) as u8).collect()
}

#[test]
#[allow(clippy::needless_range_loop)]
fn gptq_3bit_straddling_words_known_answer() {
    let v = v3();
    // Literal words (computed independently, as a 96-bit little-endian integer).
    let expected: [u32; 3] = [0x43c6_7543, 0x7543_c675, 0xc675_43c6];
    // The same words built by the documented rules (formats.md §2.1).
    let mut w = [0u32; 3];
    for j in 0..10 {
        w[0] |= u32::from(v[j]) << (3 * j);
    }
    w[0] |= u32::from(v[10] & 0b11) << 30;
    w[1] |= u32::from(v[10] >> 2) & 1;
    for j in 11..21 {
        w[1] |= u32::from(v[j]) << (3 * (j - 11) + 1);
    }
    w[1] |= (u32::from(v[21]) & 1) << 31;
    w[2] |= u32::from(v[21] >> 1);
    for j in 22..32 {
        w[2] |= u32::from(v[j]) << (3 * (j - 22) + 2);
    }
    assert_eq!(w, expected);
    // One output column (n = 1), k = 32 inputs.
    let q = gptq_format::pack_qweight(&v, 1, 32, 3).unwrap();
    assert_eq!(
        q.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        expected.to_vec()
    );
    assert_eq!(gptq_format::unpack_qweight(&q, 1, 32, 3).unwrap(), v);
    // Two columns: qweight is [3, 2], column c in position c of each word row.
    let mut codes = v.clone();
    codes.extend(v.iter().map(|&x| 7 - x));
    let q2 = gptq_format::pack_qweight(&codes, 2, 32, 3).unwrap();
    assert_eq!(q2.len(), 6);
    for r in 0..3 {
        assert_eq!(q2[r * 2] as u32, expected[r]);
    }
    // qzeros along n: the same stream.
    let z = gptq_format::pack_qzeros(&v, 1, 32, 3).unwrap();
    assert_eq!(
        z.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        expected.to_vec()
    );
}

#[test]
fn gptq_4bit_and_2bit_known_answers() {
    // k = 8 codes 0..7 in one 4-bit word, LSB first.
    let c: Vec<u8> = (0..8).collect();
    assert_eq!(
        gptq_format::pack_qweight(&c, 1, 8, 4).unwrap(),
        vec![0x7654_3210]
    );
    // Symmetric 4-bit v1 zeros (8 − 1 = 7) give 0x77777777.
    assert_eq!(
        gptq_format::pack_qzeros(&[7u8; 8], 1, 8, 4).unwrap(),
        vec![0x7777_7777]
    );
    let c2: Vec<u8> = (0..16).map(|i| (i % 4) as u8).collect();
    assert_eq!(
        gptq_format::pack_qweight(&c2, 1, 16, 2).unwrap()[0] as u32,
        0xE4E4_E4E4
    );
    let c8 = [1u8, 2, 3, 0xFF];
    assert_eq!(
        gptq_format::pack_qweight(&c8, 1, 4, 8).unwrap()[0] as u32,
        0xFF03_0201
    );
}

#[test]
fn awq_interleave_known_answer() {
    // n = 8 output columns with code = column index, k = 1.
    let codes: Vec<u8> = (0..8).collect();
    let q = awq_format::pack_qweight(&codes, 8, 1).unwrap();
    // slot i holds column ORDER_MAP[i] = [0,2,4,6,1,3,5,7].
    assert_eq!(q, vec![0x7531_6420]);
    assert_eq!(awq_format::unpack_qweight(&q, 8, 1).unwrap(), codes);
    let z = awq_format::pack_qzeros(&codes, 1, 8).unwrap();
    assert_eq!(z, vec![0x7531_6420]);
    // k = 2: second input row lands in the second word row.
    let mut codes2 = vec![0u8; 16];
    for c in 0..8 {
        codes2[c * 2] = c as u8;
        codes2[c * 2 + 1] = 15 - c as u8;
    }
    let q2 = awq_format::pack_qweight(&codes2, 8, 2).unwrap();
    assert_eq!(q2[0], 0x7531_6420);
    assert_eq!(q2[1] as u32, 0x8ace_9bdf);
}

#[test]
fn format_errors() {
    assert!(matches!(
        gptq_format::pack_qweight(&[0; 32], 1, 32, 5),
        Err(KernelError::UnsupportedBits { bits: 5 })
    ));
    assert!(matches!(
        gptq_format::pack_qweight(&[0; 32], 1, 32, 0),
        Err(KernelError::UnsupportedBits { .. })
    ));
    assert!(matches!(
        gptq_format::pack_qweight(&[0; 32], 1, 32, 9),
        Err(KernelError::UnsupportedBits { .. })
    ));
    assert!(matches!(
        gptq_format::pack_qweight(&[0; 31], 1, 31, 4),
        Err(KernelError::NotMultiple { .. })
    ));
    assert!(matches!(
        gptq_format::pack_qweight(&[0; 31], 1, 32, 4),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gptq_format::pack_qweight(&[16; 8], 1, 8, 4),
        Err(KernelError::CodeOutOfRange { .. })
    ));
    assert!(matches!(
        gptq_format::unpack_qweight(&[0; 3], 2, 8, 4),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gptq_format::pack_qzeros(&[0; 12], 1, 12, 4),
        Err(KernelError::NotMultiple { .. })
    ));
    assert!(matches!(
        gptq_format::unpack_qzeros(&[0; 2], 1, 8, 4),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        awq_format::pack_qweight(&[0; 7], 7, 1),
        Err(KernelError::NotMultiple { .. })
    ));
    assert!(matches!(
        awq_format::pack_qweight(&[16; 8], 8, 1),
        Err(KernelError::CodeOutOfRange { .. })
    ));
    assert!(matches!(
        awq_format::unpack_qweight(&[0; 3], 8, 2),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        awq_format::pack_qzeros(&[0; 8], 2, 8),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        awq_format::unpack_qzeros(&[0; 1], 1, 12),
        Err(KernelError::NotMultiple { .. })
    ));
}

fn gptq_case() -> impl Strategy<Value = (u8, usize, usize, Vec<u8>)> {
    (
        prop::sample::select(vec![1u8, 2, 3, 4, 8]),
        1usize..7,
        1usize..4,
    )
        .prop_flat_map(|(bits, n, kmul)| {
            // k·bits must be a multiple of 32: k a multiple of 32 always works.
            let k = 32 * kmul;
            (
                Just(bits),
                Just(n),
                Just(k),
                prop::collection::vec(0u8..=((1u16 << bits) - 1) as u8, n * k),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gptq_qweight_round_trip((bits, n, k, codes) in gptq_case()) {
        let q = gptq_format::pack_qweight(&codes, n, k, bits).unwrap();
        prop_assert_eq!(q.len(), k * bits as usize / 32 * n);
        prop_assert_eq!(gptq_format::unpack_qweight(&q, n, k, bits).unwrap(), codes);
    }

    #[test]
    fn gptq_qzeros_round_trip((bits, groups, n, zeros) in gptq_case()) {
        let q = gptq_format::pack_qzeros(&zeros, groups, n, bits).unwrap();
        prop_assert_eq!(q.len(), groups * n * bits as usize / 32);
        prop_assert_eq!(gptq_format::unpack_qzeros(&q, groups, n, bits).unwrap(), zeros);
    }

    #[test]
    fn gptq_4bit_odd_k_round_trip(n in 1usize..5, k8 in 1usize..9, seed in any::<u64>()) {
        // 4-bit needs only k % 8 == 0: k = 8, 16, ..., 64 (not multiples of 32).
        let k = 8 * k8;
        let codes: Vec<u8> = (0..n * k).map(|i| ((seed >> (i % 60)) as u8 ^ i as u8) & 15).collect();
        let q = gptq_format::pack_qweight(&codes, n, k, 4).unwrap();
        prop_assert_eq!(gptq_format::unpack_qweight(&q, n, k, 4).unwrap(), codes);
    }

    #[test]
    fn awq_round_trip(n8 in 1usize..5, k in 1usize..37, groups in 1usize..4, seed in any::<u64>()) {
        let n = 8 * n8;
        let codes: Vec<u8> = (0..n * k).map(|i| ((seed.rotate_left(i as u32 % 64) as u8) ^ (i as u8)) & 15).collect();
        let q = awq_format::pack_qweight(&codes, n, k).unwrap();
        prop_assert_eq!(q.len(), k * n / 8);
        prop_assert_eq!(awq_format::unpack_qweight(&q, n, k).unwrap(), codes);
        let zeros: Vec<u8> = (0..groups * n).map(|i| (i as u8 ^ seed as u8) & 15).collect();
        let z = awq_format::pack_qzeros(&zeros, groups, n).unwrap();
        prop_assert_eq!(awq_format::unpack_qzeros(&z, groups, n).unwrap(), zeros);
    }
}
