//! Decisions without I/O: admission against a group's copy-on-write reserve, and the
//! sharing arithmetic of the accounting.

/// Whether a group takes another VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start it.
    Admit,
    /// Refuse it: the pages guests broke (plus what the new VM says it will break) would
    /// exceed the reserve.
    Refuse {
        /// Broken pages, including the new VM's expected writes.
        projected: u64,
        /// The reserve in pages.
        reserve: u64,
    },
}

/// Admission rule of a group's copy-on-write reserve: a VM is admitted while the pages
/// already broken plus the pages the new VM expects to write stay within the reserve.
/// The reserve is memory the operator sets aside for copies; refusing VMs beyond it keeps
/// the host out of the OOM killer's reach when guests write to shared pages.
pub fn admit(broken_pages: u64, expected_writes: u64, reserve_pages: u64) -> Admission {
    let projected = broken_pages.saturating_add(expected_writes);
    if projected > reserve_pages {
        Admission::Refuse {
            projected,
            reserve: reserve_pages,
        }
    } else {
        Admission::Admit
    }
}

/// Sharing figures of a set of VMs, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sharing {
    /// Image pages loaded into guests.
    pub loaded: u64,
    /// Pages holding image content (the store's pages plus the guests' copies).
    pub used: u64,
    /// The fewest pages that could hold the loaded content (distinct contents).
    pub minimum: u64,
}

impl Sharing {
    /// Pages saved against a plain copy per guest.
    pub fn saved(&self) -> u64 {
        self.loaded.saturating_sub(self.used)
    }

    /// The most that can be saved.
    pub fn achievable(&self) -> u64 {
        self.loaded.saturating_sub(self.minimum)
    }

    /// Saved / achievable (1.0 when nothing can be saved).
    pub fn fraction(&self) -> f64 {
        if self.achievable() == 0 {
            1.0
        } else {
            self.saved() as f64 / self.achievable() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn admission_is_monotone_and_never_exceeds_the_reserve(
            broken in 0u64..1_000_000, more in 0u64..1000, want in 0u64..1000, reserve in 0u64..1_000_000,
        ) {
            let a = admit(broken, want, reserve);
            if a == Admission::Admit {
                prop_assert!(broken + want <= reserve);
            } else {
                // More broken pages or more expected writes never turn a refusal into admission.
                prop_assert_ne!(admit(broken + more, want, reserve), Admission::Admit);
                prop_assert_ne!(admit(broken, want + more, reserve), Admission::Admit);
            }
            if broken > reserve {
                prop_assert_ne!(a, Admission::Admit);
            }
        }

        #[test]
        fn fraction_is_one_at_the_minimum(loaded in 1u64..10_000, minimum in 0u64..10_000) {
            let minimum = minimum.min(loaded);
            let s = Sharing { loaded, used: minimum, minimum };
            prop_assert_eq!(s.fraction(), 1.0);
            let plain = Sharing { loaded, used: loaded, minimum };
            prop_assert!(plain.fraction() == 0.0 || minimum == loaded);
        }
    }
}
