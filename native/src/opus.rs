//! Opus decoding in the I/O thread: a track's frames as 48 kHz interleaved stereo s16le PCM (libopus, built
//! from the source `audiopus_sys` bundles and linked statically).

use std::ffi::CStr;
use std::ptr::NonNull;

use audiopus_sys as ffi;

const SAMPLE_RATE: i32 = 48_000;
const CHANNELS: usize = 2;
/// Bytes of one interleaved s16 stereo sample frame.
const FRAME_BYTES: usize = 2 * CHANNELS;
/// 120 ms, the longest legal packet.
const MAX_PACKET_SAMPLES: usize = 5_760;
/// A TOC byte (and a frame count) only: every frame in the packet is empty (DTX).
const DTX_MAX_BYTES: usize = 2;

/// One track's decoder state.
pub struct OpusDecoder {
    state: NonNull<ffi::OpusDecoder>,
    last_samples: usize,
}

// SAFETY: the state is owned by this value and only used through `&mut self`.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    pub fn new() -> Result<Self, String> {
        let mut error = 0;
        // SAFETY: plain constructor; `error` outlives the call.
        let state = unsafe { ffi::opus_decoder_create(SAMPLE_RATE, CHANNELS as i32, &mut error) };
        match NonNull::new(state) {
            Some(state) if error == 0 => Ok(OpusDecoder {
                state,
                last_samples: 960,
            }),
            _ => Err(format!("opus_decoder_create failed: {}", strerror(error))),
        }
    }

    /// PCM for one packet. A DTX packet becomes zeros of its TOC's duration, an empty one repeats the previous
    /// packet's duration (mono packets come out on both channels); an invalid packet is an error.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<u8>, String> {
        let samples = if packet.is_empty() {
            self.last_samples
        } else {
            // SAFETY: reads `packet.len()` bytes of `packet`.
            let n = unsafe {
                ffi::opus_packet_get_nb_samples(packet.as_ptr(), packet.len() as i32, SAMPLE_RATE)
            };
            if n < 0 {
                return Err(format!("invalid Opus packet: {}", strerror(n)));
            }
            if n == 0 || n as usize > MAX_PACKET_SAMPLES {
                return Err(format!("invalid Opus packet: {n} samples"));
            }
            n as usize
        };
        self.last_samples = samples;
        if packet.len() <= DTX_MAX_BYTES {
            return Ok(vec![0; samples * FRAME_BYTES]);
        }
        let mut pcm = vec![0u8; samples * FRAME_BYTES];
        // SAFETY: libopus writes at most `samples` sample frames (what the packet holds) into `pcm`, which has
        // room for exactly that many; i16 output into a byte buffer is fine on little-endian x86/ARM.
        let decoded = unsafe {
            ffi::opus_decode(
                self.state.as_ptr(),
                packet.as_ptr(),
                packet.len() as i32,
                pcm.as_mut_ptr().cast(),
                samples as i32,
                0,
            )
        };
        if decoded < 0 {
            return Err(format!("invalid Opus packet: {}", strerror(decoded)));
        }
        pcm.truncate(decoded as usize * FRAME_BYTES);
        Ok(pcm)
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: the state came from opus_decoder_create and is destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.state.as_ptr()) }
    }
}

fn strerror(code: i32) -> String {
    // SAFETY: opus_strerror returns a static NUL-terminated string for any code.
    unsafe { CStr::from_ptr(ffi::opus_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms packets of a 440 Hz (left) / 660 Hz (right) tone, or 440 Hz mono, encoded with libopus.
    fn tone_packets(count: usize, channels: usize) -> Vec<Vec<u8>> {
        let mut error = 0;
        // SAFETY: the encoder is created, used with buffers of the sizes given, and destroyed here.
        unsafe {
            let enc = ffi::opus_encoder_create(
                SAMPLE_RATE,
                channels as i32,
                ffi::OPUS_APPLICATION_AUDIO,
                &mut error,
            );
            assert_eq!(error, 0);
            let packets = (0..count)
                .map(|k| {
                    let pcm: Vec<i16> = (0..960 * channels)
                        .map(|i| {
                            let t = (k * 960 + i / channels) as f64 / 48_000.0;
                            let hz = [440.0, 660.0][i % channels];
                            (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
                        })
                        .collect();
                    let mut out = vec![0u8; 1500];
                    let n = ffi::opus_encode(enc, pcm.as_ptr(), 960, out.as_mut_ptr(), 1500);
                    assert!(n > 0);
                    out.truncate(n as usize);
                    out
                })
                .collect();
            ffi::opus_encoder_destroy(enc);
            packets
        }
    }

    /// Interleaved (left, right) samples.
    fn samples(pcm: &[u8]) -> Vec<(i16, i16)> {
        pcm.chunks_exact(FRAME_BYTES)
            .map(|b| {
                (
                    i16::from_le_bytes([b[0], b[1]]),
                    i16::from_le_bytes([b[2], b[3]]),
                )
            })
            .collect()
    }

    /// Zero crossings per second of one channel: twice its frequency for a pure tone.
    fn crossings_per_second(channel: &[i16]) -> f64 {
        let n = channel
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        n as f64 * 48_000.0 / channel.len() as f64
    }

    #[test]
    fn stereo_decodes_to_interleaved_s16_at_48k() {
        let mut dec = OpusDecoder::new().unwrap();
        let pcm: Vec<u8> = tone_packets(50, 2)
            .iter()
            .flat_map(|p| dec.decode(p).unwrap())
            .collect();
        assert_eq!(pcm.len(), 48_000 * FRAME_BYTES);
        let tail = samples(&pcm[4800 * FRAME_BYTES..]);
        let left: Vec<i16> = tail.iter().map(|s| s.0).collect();
        let right: Vec<i16> = tail.iter().map(|s| s.1).collect();
        assert!((crossings_per_second(&left) - 880.0).abs() < 10.0);
        assert!((crossings_per_second(&right) - 1320.0).abs() < 10.0);
        let peak = left.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((6800..=9200).contains(&peak), "peak {peak}");
    }

    #[test]
    fn mono_comes_out_on_both_channels() {
        let packets = tone_packets(10, 1);
        assert_eq!(packets[0][0] & 0b100, 0, "a mono TOC");
        let mut dec = OpusDecoder::new().unwrap();
        let pcm: Vec<u8> = packets
            .iter()
            .flat_map(|p| dec.decode(p).unwrap())
            .collect();
        assert_eq!(pcm.len(), 9600 * FRAME_BYTES);
        assert!(samples(&pcm).iter().all(|(l, r)| l == r));
    }

    #[test]
    fn dtx_is_silence_of_the_toc_duration_and_empty_repeats_it() {
        let mut dec = OpusDecoder::new().unwrap();
        assert_eq!(dec.decode(&[1 << 3]).unwrap(), vec![0; 960 * FRAME_BYTES]); // SILK 20 ms, no data
        let two_empty_celt = [31 << 3 | 3, 2]; // code 3: two empty 20 ms frames
        assert_eq!(
            dec.decode(&two_empty_celt).unwrap(),
            vec![0; 1920 * FRAME_BYTES]
        );
        assert_eq!(dec.decode(&[]).unwrap(), vec![0; 1920 * FRAME_BYTES]);
    }

    #[test]
    fn invalid_packets_are_errors_and_decoding_goes_on() {
        let mut dec = OpusDecoder::new().unwrap();
        assert!(dec.decode(&[31 << 3 | 3]).is_err()); // code 3 without its frame count
        let mut over_120ms = vec![31 << 3 | 3, 0x3f];
        over_120ms.extend([0xff; 40]);
        assert!(dec.decode(&over_120ms).is_err());
        let mut too_long = vec![31 << 3];
        too_long.extend([0xff; 1300]); // one frame over libopus's 1275-byte limit
        let error = dec.decode(&too_long).unwrap_err();
        assert!(error.contains("corrupted stream"), "{error}");
        let good = &tone_packets(1, 2)[0];
        assert_eq!(dec.decode(good).unwrap().len(), 960 * FRAME_BYTES);
    }
}
