//! The grid of a sweep: methods × bit widths × group sizes, and how it is split into shards.

use serde::{Deserialize, Serialize};

use crate::calibration::Calibration;
use crate::config::{AwqConfig, GptqConfig, RtnConfig, SmoothQuantConfig, PAPER_GROUP_SIZE};
use crate::error::{Error, Result};
use crate::quantize::Quantize;
use crate::BillmConfig;

/// A method of the sweep grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepMethod {
    /// The unquantized model (the baseline row).
    Fp,
    /// Round-to-nearest.
    Rtn,
    /// GPTQ.
    Gptq,
    /// AWQ (scales and clipping, then RTN).
    Awq,
    /// AWQ's scales and clipping, then GPTQ.
    AwqGptq,
    /// SmoothQuant (weights and activations).
    Smoothquant,
    /// BiLLM.
    Billm,
    /// GPTQ with the error-minimising range search of its group parameters (`mse`).
    GptqMse,
    /// AWQ's scales and clipping, then GPTQ with the range search.
    AwqGptqMse,
    /// A randomized Hadamard rotation of the residual stream, then GPTQ.
    HadamardGptq,
    /// A randomized Hadamard rotation, then GPTQ with the range search.
    HadamardGptqMse,
    /// GPTQ with first-order error compensation (FOEM, `beta` = [`FOEM_BETA`]).
    GptqFoem,
    /// The `best` recipe: GPTQ with act-order, static groups, the range search, dampening 0.05,
    /// asymmetric calibration and the refinement of codes and scales
    /// ([`crate::GptqConfig::best`]).
    Best,
}

impl SweepMethod {
    /// Every method, in table order.
    pub const ALL: [SweepMethod; 13] = [
        SweepMethod::Fp,
        SweepMethod::Rtn,
        SweepMethod::Gptq,
        SweepMethod::Awq,
        SweepMethod::AwqGptq,
        SweepMethod::GptqMse,
        SweepMethod::AwqGptqMse,
        SweepMethod::HadamardGptq,
        SweepMethod::HadamardGptqMse,
        SweepMethod::GptqFoem,
        SweepMethod::Best,
        SweepMethod::Smoothquant,
        SweepMethod::Billm,
    ];

    /// Name on the command line and in cell ids (`fp`, `rtn`, `gptq`, `awq`, `awqgptq`,
    /// `smoothquant`, `billm`).
    ///
    /// ```
    /// use qwen3_quant::sweep::SweepMethod;
    /// assert_eq!(SweepMethod::parse("awq+gptq"), Some(SweepMethod::AwqGptq));
    /// assert_eq!(SweepMethod::AwqGptq.name(), "awqgptq");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            SweepMethod::Fp => "fp",
            SweepMethod::Rtn => "rtn",
            SweepMethod::Gptq => "gptq",
            SweepMethod::Awq => "awq",
            SweepMethod::AwqGptq => "awqgptq",
            SweepMethod::Smoothquant => "smoothquant",
            SweepMethod::Billm => "billm",
            SweepMethod::GptqMse => "gptqmse",
            SweepMethod::AwqGptqMse => "awqgptqmse",
            SweepMethod::HadamardGptq => "hadgptq",
            SweepMethod::HadamardGptqMse => "hadgptqmse",
            SweepMethod::GptqFoem => "gptqfoem",
            SweepMethod::Best => "best",
        }
    }

    /// Parses a name ([`SweepMethod::name`], also `awq+gptq` and `sq`).
    pub fn parse(s: &str) -> Option<SweepMethod> {
        match s.to_ascii_lowercase().as_str() {
            "fp" | "f32" | "bf16" | "fp16" => Some(SweepMethod::Fp),
            "rtn" => Some(SweepMethod::Rtn),
            "gptq" => Some(SweepMethod::Gptq),
            "awq" => Some(SweepMethod::Awq),
            "awqgptq" | "awq+gptq" | "awq-gptq" => Some(SweepMethod::AwqGptq),
            "smoothquant" | "sq" => Some(SweepMethod::Smoothquant),
            "billm" => Some(SweepMethod::Billm),
            "gptqmse" | "gptq+mse" => Some(SweepMethod::GptqMse),
            "awqgptqmse" | "awq+gptq+mse" => Some(SweepMethod::AwqGptqMse),
            "hadgptq" | "hadamard+gptq" => Some(SweepMethod::HadamardGptq),
            "hadgptqmse" | "hadamard+gptq+mse" => Some(SweepMethod::HadamardGptqMse),
            "gptqfoem" | "gptq+foem" | "foem" => Some(SweepMethod::GptqFoem),
            "best" => Some(SweepMethod::Best),
            _ => None,
        }
    }

    /// Display name (`RTN`, `GPTQ`, `AWQ`, `AWQ+GPTQ`, `SmoothQuant`, `BiLLM`, `FP`).
    pub fn title(self) -> &'static str {
        match self {
            SweepMethod::Fp => "FP",
            SweepMethod::Rtn => "RTN",
            SweepMethod::Gptq => "GPTQ",
            SweepMethod::Awq => "AWQ",
            SweepMethod::AwqGptq => "AWQ+GPTQ",
            SweepMethod::Smoothquant => "SmoothQuant",
            SweepMethod::Billm => "BiLLM",
            SweepMethod::GptqMse => "GPTQ+MSE",
            SweepMethod::AwqGptqMse => "AWQ+GPTQ+MSE",
            SweepMethod::HadamardGptq => "Hadamard+GPTQ",
            SweepMethod::HadamardGptqMse => "Hadamard+GPTQ+MSE",
            SweepMethod::GptqFoem => "GPTQ+FOEM",
            SweepMethod::Best => "best recipe",
        }
    }
}

/// The `beta` of the sweep's GPTQ+FOEM cells: the middle of the 0.1–0.25 that the FOEM authors
/// recommend for GPTQModel's implementation.
pub const FOEM_BETA: f32 = 0.2;

/// One cell of the grid: a method at a weight width, activation width and group size.
///
/// ```
/// use qwen3_quant::sweep::{Cell, SweepMethod};
/// let c = Cell { method: SweepMethod::Gptq, bits: 3, act_bits: None, group_size: None };
/// assert_eq!((c.id(), c.series()), ("gptq_w3_pc".to_string(), "GPTQ per-channel".to_string()));
/// let sq = Cell { method: SweepMethod::Smoothquant, bits: 4, act_bits: Some(8), group_size: None };
/// assert_eq!(sq.id(), "smoothquant_w4a8");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    /// The method.
    pub method: SweepMethod,
    /// Weight bits (1 for BiLLM, 16 for the baseline).
    pub bits: u8,
    /// Activation bits (SmoothQuant).
    pub act_bits: Option<u8>,
    /// Group size; `None` = per channel (or not grouped).
    pub group_size: Option<usize>,
}

impl Cell {
    /// The baseline cell.
    pub const FP: Cell = Cell {
        method: SweepMethod::Fp,
        bits: 16,
        act_bits: None,
        group_size: None,
    };

    fn grouped(&self) -> bool {
        !matches!(
            self.method,
            SweepMethod::Fp | SweepMethod::Smoothquant | SweepMethod::Billm
        )
    }

    /// File-name-safe id: `fp`, `rtn_w4_g128`, `gptq_w3_pc`, `smoothquant_w4a8`, `billm_w1`.
    pub fn id(&self) -> String {
        match self.method {
            SweepMethod::Fp => "fp".into(),
            SweepMethod::Smoothquant => format!(
                "smoothquant_w{}a{}",
                self.bits,
                self.act_bits.map_or("16".into(), |a| a.to_string())
            ),
            SweepMethod::Billm => "billm_w1".into(),
            m => format!(
                "{}_w{}_{}",
                m.name(),
                self.bits,
                self.group_size.map_or("pc".into(), |g| format!("g{g}"))
            ),
        }
    }

    /// The plot line this cell belongs to: method and grouping (`GPTQ g128`), or activation
    /// bits for SmoothQuant (`SmoothQuant A8`).
    pub fn series(&self) -> String {
        let m = self.method.title();
        if self.grouped() {
            match self.group_size {
                Some(g) => format!("{m} g{g}"),
                None => format!("{m} per-channel"),
            }
        } else if let (SweepMethod::Smoothquant, Some(a)) = (self.method, self.act_bits) {
            format!("{m} A{a}")
        } else {
            m.to_string()
        }
    }

    /// The quantization job of this cell with the study's settings (`None` for the baseline);
    /// impossible settings surface when it runs.
    pub fn job(&self, calibration: &Calibration) -> Option<Quantize<'static>> {
        let (bits, group_size) = (self.bits, self.group_size);
        let gptq = GptqConfig {
            bits,
            group_size,
            ..Default::default()
        };
        let awq = AwqConfig {
            bits,
            group_size,
            ..Default::default()
        };
        let q = match self.method {
            SweepMethod::Fp => return None,
            SweepMethod::Rtn => Quantize::rtn(RtnConfig {
                bits,
                group_size,
                ..Default::default()
            }),
            SweepMethod::Gptq => Quantize::gptq(GptqConfig {
                bits,
                group_size,
                ..Default::default()
            }),
            SweepMethod::Awq => Quantize::awq(AwqConfig {
                bits,
                group_size,
                ..Default::default()
            }),
            SweepMethod::AwqGptq => Quantize::awq_then_gptq(
                AwqConfig {
                    bits,
                    group_size,
                    ..Default::default()
                },
                GptqConfig {
                    bits,
                    group_size,
                    ..Default::default()
                },
            ),
            SweepMethod::Smoothquant => Quantize::smoothquant(SmoothQuantConfig {
                weight_bits: bits,
                act_bits: self.act_bits,
                ..Default::default()
            }),
            SweepMethod::Billm => Quantize::billm(BillmConfig::default()),
            SweepMethod::GptqMse => Quantize::gptq(gptq.with_mse(true)),
            SweepMethod::AwqGptqMse => Quantize::awq_then_gptq(awq, gptq.with_mse(true)),
            SweepMethod::HadamardGptq => Quantize::gptq(gptq).rotate(0),
            SweepMethod::HadamardGptqMse => Quantize::gptq(gptq.with_mse(true)).rotate(0),
            SweepMethod::GptqFoem => Quantize::gptq(gptq.with_first_order(Some(FOEM_BETA))),
            SweepMethod::Best => Quantize::gptq(GptqConfig::best(bits, group_size)),
        };
        Some(q.calibration(calibration.clone()))
    }
}

/// Which part of a grid one machine runs: cells `k` with `k mod count == index` (0-based), so
/// that shards get a mix of cheap and expensive cells and every cell is in exactly one shard.
///
/// ```
/// use qwen3_quant::sweep::Shard;
/// let s: Shard = "2/8".parse()?;
/// assert_eq!((s.index, s.count), (2, 8));
/// assert!("8/8".parse::<Shard>().is_err());
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::invalid(format!("bad shard {s:?}: expected I/N with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The cells of a sweep, in order.
///
/// ```
/// use qwen3_quant::sweep::{Grid, SweepMethod};
/// let paper = Grid::paper();
/// assert_eq!(paper.cells().len(), 1 + 3 * 4 * 2 + 3 + 1);
/// let small = paper.filter(&[SweepMethod::Rtn, SweepMethod::Gptq], &[4], &[Some(128)]);
/// let ids: Vec<String> = small.cells().iter().map(|c| c.id()).collect();
/// assert_eq!(ids, ["fp", "rtn_w4_g128", "gptq_w4_g128"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    cells: Vec<Cell>,
}

impl Grid {
    /// The study's grid: the baseline; RTN, GPTQ and AWQ at 8, 4, 3 and 2 bits, group 128 and
    /// per channel; SmoothQuant W8A8, W4A8 and W4A4; BiLLM.
    pub fn paper() -> Grid {
        let mut cells = vec![Cell::FP];
        for method in [SweepMethod::Rtn, SweepMethod::Gptq, SweepMethod::Awq] {
            for group_size in [Some(PAPER_GROUP_SIZE), None] {
                for bits in [8, 4, 3, 2] {
                    cells.push(Cell {
                        method,
                        bits,
                        act_bits: None,
                        group_size,
                    });
                }
            }
        }
        for (bits, act) in [(8, 8), (4, 8), (4, 4)] {
            cells.push(Cell {
                method: SweepMethod::Smoothquant,
                bits,
                act_bits: Some(act),
                group_size: None,
            });
        }
        cells.push(Cell {
            method: SweepMethod::Billm,
            bits: 1,
            act_bits: None,
            group_size: None,
        });
        Grid { cells }
    }

    /// The paper's grid plus "AWQ then GPTQ" at the same widths and groups.
    pub fn extended() -> Grid {
        let mut g = Grid::paper();
        let at = g
            .cells
            .iter()
            .position(|c| c.method == SweepMethod::Smoothquant)
            .unwrap_or(g.cells.len());
        let extra: Vec<Cell> = g
            .cells
            .iter()
            .filter(|c| c.method == SweepMethod::Awq)
            .map(|c| Cell {
                method: SweepMethod::AwqGptq,
                ..*c
            })
            .collect();
        g.cells.splice(at..at, extra);
        g
    }

    /// The study's weight-only methods at 4, 3 and 2 bits, group 128, next to the candidates that
    /// beat them (`docs/beyond-the-study.md`): GPTQ with the range search, a Hadamard rotation
    /// before it, GPTQ with first-order error compensation (FOEM), and the `best` recipe. (AWQ then GPTQ, with or without the range search, and the
    /// rotation alone were measured at 3 bits only: they did not help.)
    ///
    /// ```
    /// use qwen3_quant::sweep::Grid;
    /// assert_eq!(Grid::beyond().cells().len(), 1 + 7 * 3);
    /// ```
    pub fn beyond() -> Grid {
        use SweepMethod::*;
        let mut cells = vec![Cell::FP];
        for method in [Rtn, Gptq, Awq, GptqMse, HadamardGptqMse, GptqFoem, Best] {
            for bits in [4, 3, 2] {
                cells.push(Cell {
                    method,
                    bits,
                    act_bits: None,
                    group_size: Some(PAPER_GROUP_SIZE),
                });
            }
        }
        Grid { cells }
    }

    /// A grid by name: `paper`, `extended` or `beyond`.
    ///
    /// # Errors
    /// An unknown name.
    pub fn named(name: &str) -> Result<Grid> {
        match name {
            "paper" => Ok(Grid::paper()),
            "extended" => Ok(Grid::extended()),
            "beyond" => Ok(Grid::beyond()),
            _ => Err(Error::invalid(format!(
                "unknown grid {name:?}: expected paper, extended or beyond"
            ))),
        }
    }

    /// A grid of explicit cells.
    pub fn from_cells(cells: Vec<Cell>) -> Grid {
        Grid { cells }
    }

    /// The cells.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// Keeps the cells whose method, bits and group size are in the lists (an empty list keeps
    /// everything). The baseline is kept whatever the filters say; bits filter weight bits
    /// (SmoothQuant W4A8 and W4A4 are both `4`); the group filter applies to grouped methods.
    pub fn filter(&self, methods: &[SweepMethod], bits: &[u8], groups: &[Option<usize>]) -> Grid {
        let cells = self
            .cells
            .iter()
            .filter(|c| {
                c.method == SweepMethod::Fp
                    || ((methods.is_empty() || methods.contains(&c.method))
                        && (bits.is_empty() || bits.contains(&c.bits))
                        && (groups.is_empty() || !c.grouped() || groups.contains(&c.group_size)))
            })
            .copied()
            .collect();
        Grid { cells }
    }

    /// Without the baseline row.
    pub fn without_baseline(&self) -> Grid {
        Grid {
            cells: self
                .cells
                .iter()
                .filter(|c| c.method != SweepMethod::Fp)
                .copied()
                .collect(),
        }
    }

    /// The cells of one shard.
    ///
    /// ```
    /// use qwen3_quant::sweep::{Grid, Shard};
    /// let g = Grid::paper();
    /// let all: usize = (0..4).map(|i| g.shard(Shard { index: i, count: 4 }).len()).sum();
    /// assert_eq!(all, g.cells().len());
    /// ```
    pub fn shard(&self, shard: Shard) -> Vec<Cell> {
        self.cells
            .iter()
            .enumerate()
            .filter(|(k, _)| k % shard.count == shard.index)
            .map(|(_, c)| *c)
            .collect()
    }
}
