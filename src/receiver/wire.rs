//! OTLP protobuf read in place into a [`Request`] view (`view.rs`).
//!
//! `prost` materialises the whole message tree: every attribute key and value becomes a
//! `String`, every point a struct in a `Vec`, roughly ten allocations per data point, all
//! thrown away once the points are stored. This reader walks the same bytes once and keeps
//! what fanin uses as slices of the request buffer, in flat arrays (points, attributes,
//! bucket counts) that cost a handful of allocations per request. The store then finds each
//! point's stream with the borrowed attributes and copies them only for a new stream.
//!
//! It reads exactly what `prost` reads, or declines. Where `prost` would fail (bad varint,
//! wrong wire type for a known field, invalid UTF-8, a length past the end) and where its
//! rules get intricate (a singular message field sent twice is merged; groups; attribute
//! values that are arrays or maps), [`parse`] returns [`Declined`] and the caller decodes
//! the request with `prost` instead, which also produces the error message. Fields fanin
//! ignores (exemplars, schema URLs, metadata, entity references) are still checked as
//! `prost` checks them, so a request is refused by both or by neither. The tests in
//! `tests/wire.rs` compare the two readers on generated and corrupted requests.
//!
//! [`parse_known`] also takes the store's known attribute blocks (`store::KnownBlocks`): a
//! data point's run of attribute fields whose bytes are there is not read again, its pairs
//! are the ones read the first time. The run is found by its lengths alone, and what is
//! known was read from the same bytes, so the reading cannot differ; a run that is not
//! known is read field by field as always, and the point carries its bytes for the store to
//! learn (`view::Block`).

use std::ops::Range;

use super::view::{
    Block, BucketsView, DataView, ExponentialView, HistogramView, MetricView, PROFILING_REFERENCE,
    PointView, Request, ResourceView, ScopeView, SummaryView, ValueView,
};
use crate::model::{AttrRef, Kind};
use crate::store::KnownBlocks;

/// Why the reader declined a request; the caller falls back to `prost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declined(pub &'static str);

type Read<T> = Result<T, Declined>;

/// Reads a whole `ExportMetricsServiceRequest`.
///
/// # Errors
/// [`Declined`] where `prost` would fail or merge; decode the request with `prost` then.
pub fn parse(buffer: &[u8]) -> Read<Request<'_>> {
    read(buffer, None)
}

/// [`parse`], taking the attributes of every data point whose run of attribute bytes is
/// in `known` from there instead of reading them again (`store::KnownBlocks`). It reads
/// what [`parse`] reads: a known block is byte-equal to one read before.
///
/// # Errors
/// As [`parse`].
pub fn parse_known<'a>(buffer: &'a [u8], known: &'a KnownBlocks) -> Read<Request<'a>> {
    read(buffer, Some(known))
}

fn read<'a>(buffer: &'a [u8], known: Option<&'a KnownBlocks>) -> Read<Request<'a>> {
    let mut request = Request::with_capacity_for(buffer.len());
    let mut reader = Reader::new(buffer);
    while let Some((field, wire)) = reader.key()? {
        match field {
            1 => {
                let body = reader.message(wire)?;
                request.resource_metrics(body, known)?;
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(request)
}

// Wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buffer: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(buffer: &'a [u8]) -> Reader<'a> {
        Reader {
            buffer,
            position: 0,
        }
    }

    /// The next field number and wire type, or `None` at the end of the message. Declines
    /// what `prost` refuses (field 0, keys past 32 bits, wire types 6 and 7) and groups
    /// (3 and 4), which `prost` skips by rules of its own.
    fn key(&mut self) -> Read<Option<(u32, u8)>> {
        if self.position == self.buffer.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| Declined("key longer than 32 bits"))?;
        let wire = (key & 7) as u8;
        let field = key >> 3;
        if field == 0 {
            return Err(Declined("field number 0"));
        }
        match wire {
            VARINT | I64 | LEN | I32 => Ok(Some((field, wire))),
            _ => Err(Declined("group or invalid wire type")),
        }
    }

    /// A base-128 varint, at most ten bytes, the tenth at most 1 (as `prost` reads them).
    fn varint(&mut self) -> Read<u64> {
        let mut value = 0u64;
        for index in 0..10 {
            let byte = *self
                .buffer
                .get(self.position)
                .ok_or(Declined("varint runs past the end"))?;
            self.position += 1;
            if index == 9 && byte > 1 {
                return Err(Declined("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Declined("varint longer than ten bytes"))
    }

    fn take(&mut self, len: usize) -> Read<&'a [u8]> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.buffer.len())
            .ok_or(Declined("length runs past the end"))?;
        let bytes = &self.buffer[self.position..end];
        self.position = end;
        Ok(bytes)
    }

    fn fixed(&mut self) -> Read<u64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    /// The payload of a length-delimited field.
    #[inline]
    fn message(&mut self, wire: u8) -> Read<&'a [u8]> {
        expect(wire, LEN)?;
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| Declined("length past the address space"))?;
        self.take(len)
    }

    fn string(&mut self, wire: u8) -> Read<&'a str> {
        let bytes = self.message(wire)?;
        std::str::from_utf8(bytes).map_err(|_| Declined("string is not UTF-8"))
    }

    fn varint_field(&mut self, wire: u8) -> Read<u64> {
        expect(wire, VARINT)?;
        self.varint()
    }

    /// `fixed64`, `sfixed64` and `double` fields.
    fn fixed_field(&mut self, wire: u8) -> Read<u64> {
        expect(wire, I64)?;
        self.fixed()
    }

    fn double_field(&mut self, wire: u8) -> Read<f64> {
        self.fixed_field(wire).map(f64::from_bits)
    }

    /// `int32` and enum fields: the varint truncated, as `prost` does.
    fn int32_field(&mut self, wire: u8) -> Read<i32> {
        self.varint_field(wire).map(|value| value as i32)
    }

    /// `sint32` fields: zigzag over the low 32 bits.
    fn sint32_field(&mut self, wire: u8) -> Read<i32> {
        let value = self.varint_field(wire)? as u32;
        Ok((value >> 1) as i32 ^ -((value & 1) as i32))
    }

    /// A repeated `fixed64` or `double` field: packed, or one element per occurrence.
    #[inline]
    fn repeated_fixed(&mut self, wire: u8, mut push: impl FnMut(u64)) -> Read<()> {
        if wire == LEN {
            let packed = self.message(wire)?;
            if packed.len() % 8 != 0 {
                return Err(Declined("packed fixed64 length not a multiple of 8"));
            }
            let mut inner = Reader::new(packed);
            while inner.position < packed.len() {
                push(inner.fixed()?);
            }
            Ok(())
        } else {
            push(self.fixed_field(wire)?);
            Ok(())
        }
    }

    /// A repeated `uint64` field: packed, or one element per occurrence.
    fn repeated_varint(&mut self, wire: u8, out: &mut Vec<u64>) -> Read<()> {
        if wire == LEN {
            let packed = self.message(wire)?;
            let mut inner = Reader::new(packed);
            while inner.position < packed.len() {
                out.push(inner.varint()?);
            }
            Ok(())
        } else {
            out.push(self.varint_field(wire)?);
            Ok(())
        }
    }

    /// Skips a field fanin does not read. Its wire type alone says how long it is.
    fn skip(&mut self, wire: u8) -> Read<()> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.message(wire).map(drop),
            I32 => self.take(4).map(drop),
            _ => Err(Declined("group or invalid wire type")),
        }
    }
}

fn expect(wire: u8, expected: u8) -> Read<()> {
    if wire == expected {
        Ok(())
    } else {
        Err(Declined("wrong wire type for a known field"))
    }
}

/// Declines a singular message field sent twice: `prost` merges the two, which this reader
/// does not reproduce.
fn once(seen: &mut bool) -> Read<()> {
    if std::mem::replace(seen, true) {
        Err(Declined("singular message field sent twice"))
    } else {
        Ok(())
    }
}

impl<'a> Request<'a> {
    /// Room for what a request of `len` bytes usually holds, so the arrays are not copied
    /// as they grow: a data point takes well over 100 bytes on the wire once its attributes
    /// are counted, an attribute over 30.
    fn with_capacity_for(len: usize) -> Request<'a> {
        Request {
            points: Vec::with_capacity(len / 100),
            attributes: Vec::with_capacity(len / 30),
            counts: Vec::with_capacity(len / 40),
            bounds: Vec::with_capacity(len / 40),
            ..Request::default()
        }
    }

    fn resource_metrics(&mut self, body: &'a [u8], known: Option<&'a KnownBlocks>) -> Read<()> {
        let mut view = ResourceView::default();
        let mut resource_seen = false;
        let first_scope = self.scopes.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => {
                    once(&mut resource_seen)?;
                    view.attributes = self.resource(reader.message(wire)?)?;
                }
                2 => {
                    let body = reader.message(wire)?;
                    self.scope_metrics(body, known)?;
                }
                3 => drop(reader.string(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        view.scopes = first_scope..self.scopes.len();
        self.resources.push(view);
        Ok(())
    }

    /// A `Resource`: its attributes; `dropped_attributes_count` and `entity_refs` checked.
    fn resource(&mut self, body: &'a [u8]) -> Read<Range<usize>> {
        let start = self.attributes.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => self.key_value(reader.message(wire)?)?,
                2 => drop(reader.varint_field(wire)?),
                3 => entity_ref(reader.message(wire)?)?,
                _ => reader.skip(wire)?,
            }
        }
        Ok(start..self.attributes.len())
    }

    fn scope_metrics(&mut self, body: &'a [u8], known: Option<&'a KnownBlocks>) -> Read<()> {
        let mut view = ScopeView::default();
        let mut scope_seen = false;
        let first_metric = self.metrics.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => {
                    once(&mut scope_seen)?;
                    self.scope(reader.message(wire)?, &mut view)?;
                }
                2 => {
                    let body = reader.message(wire)?;
                    self.metric(body, known)?;
                }
                3 => drop(reader.string(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        view.metrics = first_metric..self.metrics.len();
        self.scopes.push(view);
        Ok(())
    }

    /// An `InstrumentationScope` into `view`.
    fn scope(&mut self, body: &'a [u8], view: &mut ScopeView<'a>) -> Read<()> {
        let start = self.attributes.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => view.name = reader.string(wire)?,
                2 => view.version = reader.string(wire)?,
                3 => self.key_value(reader.message(wire)?)?,
                4 => drop(reader.varint_field(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        view.attributes = start..self.attributes.len();
        Ok(())
    }

    fn metric(&mut self, body: &'a [u8], known: Option<&'a KnownBlocks>) -> Read<()> {
        let mut view = MetricView::default();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            let kind = match field {
                1 => {
                    view.name = reader.string(wire)?;
                    continue;
                }
                2 => {
                    view.description = reader.string(wire)?;
                    continue;
                }
                3 => {
                    view.unit = reader.string(wire)?;
                    continue;
                }
                12 => {
                    // Metadata: checked, not kept.
                    let start = self.attributes.len();
                    self.key_value(reader.message(wire)?)?;
                    self.attributes.truncate(start);
                    continue;
                }
                5 => Kind::Gauge,
                7 => Kind::Sum,
                9 => Kind::Histogram,
                10 => Kind::ExponentialHistogram,
                11 => Kind::Summary,
                _ => {
                    reader.skip(wire)?;
                    continue;
                }
            };
            if view.data.is_some() {
                return Err(Declined("metric data member sent twice"));
            }
            view.data = Some(self.data(kind, reader.message(wire)?, known)?);
        }
        self.metrics.push(view);
        Ok(())
    }

    /// `Gauge`, `Sum`, `Histogram`, `ExponentialHistogram` or `Summary`.
    fn data(
        &mut self,
        kind: Kind,
        body: &'a [u8],
        known: Option<&'a KnownBlocks>,
    ) -> Read<DataView> {
        let start = self.points.len();
        let mut view = DataView {
            kind,
            temporality: 0,
            monotonic: false,
            points: start..start,
        };
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => {
                    let body = reader.message(wire)?;
                    let point = match kind {
                        Kind::Gauge | Kind::Sum => self.number_point(body, known)?,
                        Kind::Histogram => self.histogram_point(body, known)?,
                        Kind::ExponentialHistogram => self.exponential_point(body, known)?,
                        Kind::Summary => self.summary_point(body, known)?,
                    };
                    self.points.push(point);
                }
                2 if kind.has_temporality() => view.temporality = reader.int32_field(wire)?,
                3 if kind == Kind::Sum => view.monotonic = reader.varint_field(wire)? != 0,
                _ => reader.skip(wire)?,
            }
        }
        view.points = start..self.points.len();
        Ok(view)
    }

    fn number_point(
        &mut self,
        body: &'a [u8],
        known: Option<&'a KnownBlocks>,
    ) -> Read<PointView<'a>> {
        let mut point = PointView::default();
        let start = self.attributes.len();
        let mut runs = Runs::default();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                7 => self.attribute_run(&mut reader, wire, 7, known, &mut runs)?,
                2 => point.start = reader.fixed_field(wire)?,
                3 => point.time = reader.fixed_field(wire)?,
                // The value oneof holds scalars: the last one sent wins, as in prost.
                4 => point.value = ValueView::Double(reader.double_field(wire)?),
                6 => point.value = ValueView::Int(reader.fixed_field(wire)? as i64),
                5 => self.exemplar(reader.message(wire)?)?,
                8 => point.flags = reader.varint_field(wire)? as u32,
                _ => reader.skip(wire)?,
            }
        }
        point.block = runs.block();
        point.attributes = start..self.attributes.len();
        Ok(point)
    }

    fn histogram_point(
        &mut self,
        body: &'a [u8],
        known: Option<&'a KnownBlocks>,
    ) -> Read<PointView<'a>> {
        let mut point = PointView::default();
        let mut histogram = HistogramView::default();
        let start = self.attributes.len();
        let (counts, bounds) = (self.counts.len(), self.bounds.len());
        let mut runs = Runs::default();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                9 => self.attribute_run(&mut reader, wire, 9, known, &mut runs)?,
                2 => point.start = reader.fixed_field(wire)?,
                3 => point.time = reader.fixed_field(wire)?,
                4 => histogram.count = reader.fixed_field(wire)?,
                5 => histogram.sum = Some(reader.double_field(wire)?),
                6 => reader.repeated_fixed(wire, |count| self.counts.push(count))?,
                7 => {
                    reader.repeated_fixed(wire, |bound| self.bounds.push(f64::from_bits(bound)))?
                }
                8 => self.exemplar(reader.message(wire)?)?,
                10 => point.flags = reader.varint_field(wire)? as u32,
                11 => histogram.min = Some(reader.double_field(wire)?),
                12 => histogram.max = Some(reader.double_field(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        point.block = runs.block();
        point.attributes = start..self.attributes.len();
        histogram.bucket_counts = counts..self.counts.len();
        histogram.bounds = bounds..self.bounds.len();
        point.value = ValueView::Histogram(histogram);
        Ok(point)
    }

    fn exponential_point(
        &mut self,
        body: &'a [u8],
        known: Option<&'a KnownBlocks>,
    ) -> Read<PointView<'a>> {
        let mut point = PointView::default();
        let mut histogram = ExponentialView::default();
        let start = self.attributes.len();
        let mut runs = Runs::default();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => self.attribute_run(&mut reader, wire, 1, known, &mut runs)?,
                2 => point.start = reader.fixed_field(wire)?,
                3 => point.time = reader.fixed_field(wire)?,
                4 => histogram.count = reader.fixed_field(wire)?,
                5 => histogram.sum = Some(reader.double_field(wire)?),
                6 => histogram.scale = reader.sint32_field(wire)?,
                7 => histogram.zero_count = reader.fixed_field(wire)?,
                8 | 9 => {
                    let side = if field == 8 {
                        &mut histogram.positive
                    } else {
                        &mut histogram.negative
                    };
                    if side.is_some() {
                        return Err(Declined("exponential histogram buckets sent twice"));
                    }
                    *side = Some(self.buckets(reader.message(wire)?)?);
                }
                10 => point.flags = reader.varint_field(wire)? as u32,
                11 => self.exemplar(reader.message(wire)?)?,
                12 => histogram.min = Some(reader.double_field(wire)?),
                13 => histogram.max = Some(reader.double_field(wire)?),
                14 => histogram.zero_threshold = reader.double_field(wire)?,
                _ => reader.skip(wire)?,
            }
        }
        point.block = runs.block();
        point.attributes = start..self.attributes.len();
        point.value = ValueView::Exponential(histogram);
        Ok(point)
    }

    fn buckets(&mut self, body: &'a [u8]) -> Read<BucketsView> {
        let mut view = BucketsView::default();
        let start = self.counts.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => view.offset = reader.sint32_field(wire)?,
                2 => reader.repeated_varint(wire, &mut self.counts)?,
                _ => reader.skip(wire)?,
            }
        }
        view.counts = start..self.counts.len();
        Ok(view)
    }

    fn summary_point(
        &mut self,
        body: &'a [u8],
        known: Option<&'a KnownBlocks>,
    ) -> Read<PointView<'a>> {
        let mut point = PointView::default();
        let mut summary = SummaryView::default();
        let start = self.attributes.len();
        let quantiles = self.quantiles.len();
        let mut runs = Runs::default();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                7 => self.attribute_run(&mut reader, wire, 7, known, &mut runs)?,
                2 => point.start = reader.fixed_field(wire)?,
                3 => point.time = reader.fixed_field(wire)?,
                4 => summary.count = reader.fixed_field(wire)?,
                5 => summary.sum = reader.double_field(wire)?,
                6 => {
                    let pair = quantile(reader.message(wire)?)?;
                    self.quantiles.push(pair);
                }
                8 => point.flags = reader.varint_field(wire)? as u32,
                _ => reader.skip(wire)?,
            }
        }
        point.block = runs.block();
        point.attributes = start..self.attributes.len();
        summary.quantiles = quantiles..self.quantiles.len();
        point.value = ValueView::Summary(summary);
        Ok(point)
    }

    /// An `Exemplar`: checked, not kept.
    fn exemplar(&mut self, body: &'a [u8]) -> Read<()> {
        let start = self.attributes.len();
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                7 => self.key_value(reader.message(wire)?)?,
                2 | 3 | 6 => drop(reader.fixed_field(wire)?),
                4 | 5 => drop(reader.message(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        self.attributes.truncate(start);
        Ok(())
    }

    /// A run of a data point's attribute fields (`field`, its first key read already): taken
    /// from `known` as a whole when its bytes are there, read pair by pair otherwise.
    fn attribute_run(
        &mut self,
        reader: &mut Reader<'a>,
        wire: u8,
        field: u32,
        known: Option<&'a KnownBlocks>,
        runs: &mut Runs<'a>,
    ) -> Read<()> {
        expect(wire, LEN)?;
        let start = reader.position;
        let end = run_end(reader.buffer, start, key_byte(field));
        runs.count += 1;
        if runs.count == 1 && end > start {
            let bytes = &reader.buffer[start..end];
            if let Some(block) = known.and_then(|known| known.find(bytes)) {
                self.attributes.extend(block.pairs());
                reader.position = end;
                runs.first = Block::Known(block);
                return Ok(());
            }
            runs.first = Block::New(bytes);
        }
        self.key_value(reader.message(wire)?)?;
        while reader.position < end {
            // `run_end` saw the same key before each further field of the run.
            let Some((_, wire)) = reader.key()? else {
                break;
            };
            self.key_value(reader.message(wire)?)?;
        }
        Ok(())
    }

    /// A `KeyValue`, pushed onto [`Request::attributes`].
    fn key_value(&mut self, body: &'a [u8]) -> Read<()> {
        let mut key = "";
        let mut value = AttrRef::Empty;
        let mut value_seen = false;
        let mut reader = Reader::new(body);
        while let Some((field, wire)) = reader.key()? {
            match field {
                1 => key = reader.string(wire)?,
                2 => {
                    once(&mut value_seen)?;
                    value = any_value(reader.message(wire)?)?;
                }
                3 => drop(reader.int32_field(wire)?),
                _ => reader.skip(wire)?,
            }
        }
        self.attributes.push((key, value));
        Ok(())
    }
}

/// The runs of attribute fields in one data point. Only a point whose attributes came in one
/// run has a block to learn or to find.
#[derive(Default)]
struct Runs<'a> {
    first: Block<'a>,
    count: u32,
}

impl<'a> Runs<'a> {
    fn block(&self) -> Block<'a> {
        if self.count == 1 {
            self.first
        } else {
            Block::None
        }
    }
}

/// The one-byte key of a length-delimited field numbered below 16.
const fn key_byte(field: u32) -> u8 {
    (field << 3) as u8 | LEN
}

/// Where a run of length-delimited fields keyed `key` ends, its first key read already and
/// its first length at `position`: after the last whole field, or at `position` when the
/// first is not whole.
fn run_end(buffer: &[u8], position: usize, key: u8) -> usize {
    let mut reader = Reader { buffer, position };
    let mut end = position;
    loop {
        let Ok(len) = reader.varint() else {
            return end;
        };
        let whole = usize::try_from(len).is_ok_and(|len| reader.take(len).is_ok());
        if !whole {
            return end;
        }
        end = reader.position;
        if buffer.get(end) != Some(&key) {
            return end;
        }
        reader.position = end + 1;
    }
}

/// An `AnyValue` holding a scalar. Arrays and maps are declined (rare in metrics, and their
/// nesting is where `prost`'s recursion limit applies).
#[inline]
fn any_value(body: &[u8]) -> Read<AttrRef<'_>> {
    let mut value = AttrRef::Empty;
    let mut reader = Reader::new(body);
    while let Some((field, wire)) = reader.key()? {
        value = match field {
            1 => AttrRef::Str(reader.string(wire)?),
            2 => AttrRef::Bool(reader.varint_field(wire)? != 0),
            3 => AttrRef::Int(reader.varint_field(wire)? as i64),
            4 => AttrRef::Double(reader.double_field(wire)?),
            5 | 6 => return Err(Declined("array or map attribute value")),
            7 => AttrRef::Bytes(reader.message(wire)?),
            8 => {
                reader.int32_field(wire)?;
                PROFILING_REFERENCE
            }
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
}

/// An `EntityRef`: checked, not kept.
fn entity_ref(body: &[u8]) -> Read<()> {
    let mut reader = Reader::new(body);
    while let Some((field, wire)) = reader.key()? {
        match field {
            1..=4 => drop(reader.string(wire)?),
            _ => reader.skip(wire)?,
        }
    }
    Ok(())
}

/// A `ValueAtQuantile`.
fn quantile(body: &[u8]) -> Read<(f64, f64)> {
    let mut pair = (0.0, 0.0);
    let mut reader = Reader::new(body);
    while let Some((field, wire)) = reader.key()? {
        match field {
            1 => pair.0 = reader.double_field(wire)?,
            2 => pair.1 = reader.double_field(wire)?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(pair)
}
