package trio_rt.cdc.agent;

import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.net.InetAddress;
import java.nio.ByteBuffer;
import java.time.Instant;
import java.time.LocalDate;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Date;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.UUID;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import org.apache.cassandra.db.Clustering;
import org.apache.cassandra.db.ClusteringBound;
import org.apache.cassandra.db.DeletionTime;
import org.apache.cassandra.db.LivenessInfo;
import org.apache.cassandra.db.Mutation;
import org.apache.cassandra.db.RangeTombstone;
import org.apache.cassandra.db.marshal.AbstractType;
import org.apache.cassandra.db.marshal.AsciiType;
import org.apache.cassandra.db.marshal.BooleanType;
import org.apache.cassandra.db.marshal.ByteType;
import org.apache.cassandra.db.marshal.BytesType;
import org.apache.cassandra.db.marshal.CompositeType;
import org.apache.cassandra.db.marshal.CounterColumnType;
import org.apache.cassandra.db.marshal.DecimalType;
import org.apache.cassandra.db.marshal.DoubleType;
import org.apache.cassandra.db.marshal.FloatType;
import org.apache.cassandra.db.marshal.InetAddressType;
import org.apache.cassandra.db.marshal.Int32Type;
import org.apache.cassandra.db.marshal.IntegerType;
import org.apache.cassandra.db.marshal.ListType;
import org.apache.cassandra.db.marshal.LongType;
import org.apache.cassandra.db.marshal.MapType;
import org.apache.cassandra.db.marshal.SetType;
import org.apache.cassandra.db.marshal.ShortType;
import org.apache.cassandra.db.marshal.SimpleDateType;
import org.apache.cassandra.db.marshal.TimeUUIDType;
import org.apache.cassandra.db.marshal.TimestampType;
import org.apache.cassandra.db.marshal.UTF8Type;
import org.apache.cassandra.db.marshal.UUIDType;
import org.apache.cassandra.db.partitions.PartitionUpdate;
import org.apache.cassandra.db.rows.Cell;
import org.apache.cassandra.db.rows.ColumnData;
import org.apache.cassandra.db.rows.ComplexColumnData;
import org.apache.cassandra.db.rows.Row;
import org.apache.cassandra.schema.ColumnMetadata;
import org.apache.cassandra.schema.TableMetadata;
import org.apache.cassandra.serializers.SimpleDateSerializer;
import org.apache.cassandra.transport.ProtocolVersion;

/**
 * A mutation's changes to CDC tables as JSON objects (the wire format in docs/cdc.md).
 *
 * <p>One change per row, static row, partition deletion and range deletion of each partition
 * update whose table has {@code cdc = true}. Values of the types trio_rt's {@code Table}
 * supports use its JSON conventions (uuid as text, timestamp as ISO 8601 with milliseconds and
 * {@code Z}, date as {@code YYYY-MM-DD}, blob as base64, decimal as text, NaN and infinities
 * as text, set as an array, map as an object keyed by the key's text); other types use
 * Cassandra's own {@code SELECT JSON} form.
 */
final class Changes
{
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final DateTimeFormatter ISO_MILLIS =
        DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    private Changes() {}

    /** Writes the changes of {@code mutation} to {@code out}; returns how many. */
    static int write(Mutation mutation, JsonGenerator out) throws IOException
    {
        int count = 0;
        for (PartitionUpdate update : mutation.getPartitionUpdates())
        {
            TableMetadata table = update.metadata();
            if (!table.params.cdc)
                continue;
            ByteBuffer[] partition = partitionKey(table, update.partitionKey().getKey());
            DeletionTime partitionDeletion = update.partitionLevelDeletion();
            if (!partitionDeletion.isLive())
            {
                start(out, table, "partition_delete", partitionDeletion.markedForDeleteAt());
                key(out, table, partition, null);
                out.writeEndObject();
                count++;
            }
            if (update.deletionInfo().hasRanges())
            {
                Iterator<RangeTombstone> ranges = update.deletionInfo().rangeIterator(false);
                while (ranges.hasNext())
                {
                    RangeTombstone range = ranges.next();
                    start(out, table, "range_delete", range.deletionTime().markedForDeleteAt());
                    key(out, table, partition, null);
                    out.writeObjectFieldStart("range");
                    bound(out, table, "start", range.deletedSlice().start());
                    bound(out, table, "end", range.deletedSlice().end());
                    out.writeEndObject();
                    out.writeEndObject();
                    count++;
                }
            }
            Row statics = update.staticRow();
            if (statics != null && !statics.isEmpty())
            {
                row(out, table, partition, statics);
                count++;
            }
            for (Row row : update)
            {
                row(out, table, partition, row);
                count++;
            }
        }
        return count;
    }

    private static void start(JsonGenerator out, TableMetadata table, String op, long timestamp) throws IOException
    {
        out.writeStartObject();
        out.writeStringField("keyspace", table.keyspace);
        out.writeStringField("table", table.name);
        out.writeStringField("op", op);
        out.writeNumberField("ts", timestamp);
    }

    private static ByteBuffer[] partitionKey(TableMetadata table, ByteBuffer key)
    {
        if (table.partitionKeyColumns().size() == 1)
            return new ByteBuffer[]{ key };
        return ((CompositeType) table.partitionKeyType).split(key);
    }

    private static void key(JsonGenerator out, TableMetadata table, ByteBuffer[] partition,
                            Clustering<?> clustering) throws IOException
    {
        out.writeObjectFieldStart("key");
        List<ColumnMetadata> columns = table.partitionKeyColumns();
        for (int i = 0; i < columns.size(); i++)
        {
            out.writeFieldName(columns.get(i).name.toString());
            value(out, columns.get(i).type, partition[i]);
        }
        if (clustering != null)
        {
            List<ColumnMetadata> clusteringColumns = table.clusteringColumns();
            for (int i = 0; i < clustering.size(); i++)
            {
                out.writeFieldName(clusteringColumns.get(i).name.toString());
                value(out, clusteringColumns.get(i).type, clustering.bufferAt(i));
            }
        }
        out.writeEndObject();
    }

    private static void bound(JsonGenerator out, TableMetadata table, String name,
                              ClusteringBound<?> bound) throws IOException
    {
        out.writeObjectFieldStart(name);
        out.writeObjectFieldStart("values");
        List<ColumnMetadata> columns = table.clusteringColumns();
        for (int i = 0; i < bound.size(); i++)
        {
            out.writeFieldName(columns.get(i).name.toString());
            value(out, columns.get(i).type, bound.bufferAt(i));
        }
        out.writeEndObject();
        out.writeBooleanField("inclusive", bound.isInclusive());
        out.writeEndObject();
    }

    private static void row(JsonGenerator out, TableMetadata table, ByteBuffer[] partition, Row row) throws IOException
    {
        long timestamp = Long.MIN_VALUE;
        int ttl = 0;
        long expires = 0;
        LivenessInfo liveness = row.primaryKeyLivenessInfo();
        if (!liveness.isEmpty())
        {
            timestamp = liveness.timestamp();
            if (liveness.isExpiring())
            {
                ttl = liveness.ttl();
                expires = liveness.localExpirationTime();
            }
        }
        Row.Deletion deletion = row.deletion();
        if (!deletion.isLive())
            timestamp = Math.max(timestamp, deletion.time().markedForDeleteAt());
        for (ColumnData data : row.columnData())
        {
            if (data instanceof ComplexColumnData)
            {
                ComplexColumnData complex = (ComplexColumnData) data;
                if (!complex.complexDeletion().isLive())
                    timestamp = Math.max(timestamp, complex.complexDeletion().markedForDeleteAt());
                for (Cell<?> cell : complex)
                {
                    timestamp = Math.max(timestamp, cell.timestamp());
                    if (cell.isExpiring() && ttl == 0)
                    {
                        ttl = cell.ttl();
                        expires = cell.localDeletionTime();
                    }
                }
            }
            else
            {
                Cell<?> cell = (Cell<?>) data;
                timestamp = Math.max(timestamp, cell.timestamp());
                if (cell.isExpiring() && ttl == 0)
                {
                    ttl = cell.ttl();
                    expires = cell.localDeletionTime();
                }
            }
        }
        String op;
        if (!deletion.isLive() && row.columnData().isEmpty() && liveness.isEmpty())
            op = "delete";
        else if (!liveness.isEmpty() && !row.isStatic())
            op = "insert";  // INSERT sets the row's primary-key liveness; UPDATE does not
        else
            op = "update";
        start(out, table, op, timestamp);
        if (row.isStatic())
        {
            key(out, table, partition, null);
            out.writeBooleanField("static", true);
        }
        else
        {
            key(out, table, partition, row.clustering());
        }
        if (ttl > 0)
        {
            out.writeNumberField("ttl", ttl);
            out.writeNumberField("expires", expires);
        }
        if (op.equals("delete"))
        {
            out.writeEndObject();
            return;
        }
        List<ComplexColumnData> partial = new ArrayList<>();
        out.writeObjectFieldStart("cells");
        for (ColumnData data : row.columnData())
        {
            ColumnMetadata column = data.column();
            if (data instanceof ComplexColumnData)
            {
                ComplexColumnData complex = (ComplexColumnData) data;
                if (complex.complexDeletion().isLive())
                {
                    partial.add(complex);  // elements added or removed: not the whole value
                    continue;
                }
                out.writeFieldName(column.name.toString());
                wholeCollection(out, column.type, complex);
            }
            else
            {
                Cell<?> cell = (Cell<?>) data;
                out.writeFieldName(column.name.toString());
                if (cell.isTombstone())
                    out.writeNull();
                else
                    value(out, column.type, cell.buffer());
            }
        }
        out.writeEndObject();
        if (!partial.isEmpty())
        {
            out.writeObjectFieldStart("partial");
            for (ComplexColumnData complex : partial)
            {
                out.writeObjectFieldStart(complex.column().name.toString());
                partialCollection(out, complex.column().type, complex);
                out.writeEndObject();
            }
            out.writeEndObject();
        }
        out.writeEndObject();
    }

    /** A non-frozen collection replaced (or deleted): its new elements; null when none. */
    private static void wholeCollection(JsonGenerator out, AbstractType<?> type, ComplexColumnData complex) throws IOException
    {
        List<Cell<?>> live = new ArrayList<>();
        for (Cell<?> cell : complex)
            if (!cell.isTombstone())
                live.add(cell);
        if (live.isEmpty())
        {
            out.writeNull();
            return;
        }
        AbstractType<?> unwrapped = type.unwrap();
        if (unwrapped instanceof MapType)
        {
            MapType<?, ?> map = (MapType<?, ?>) unwrapped;
            out.writeStartObject();
            for (Cell<?> cell : live)
            {
                out.writeFieldName(keyText(map.getKeysType(), cell.path().get(0)));
                value(out, map.getValuesType(), cell.buffer());
            }
            out.writeEndObject();
        }
        else if (unwrapped instanceof SetType)
        {
            out.writeStartArray();
            for (Cell<?> cell : live)
                value(out, ((SetType<?>) unwrapped).getElementsType(), cell.path().get(0));
            out.writeEndArray();
        }
        else if (unwrapped instanceof ListType)
        {
            out.writeStartArray();
            for (Cell<?> cell : live)
                value(out, ((ListType<?>) unwrapped).getElementsType(), cell.buffer());
            out.writeEndArray();
        }
        else
        {
            // A non-frozen UDT: its fields as an object (field names from the type).
            out.writeStartObject();
            for (Cell<?> cell : live)
            {
                out.writeFieldName(String.valueOf(cell.path().get(0).duplicate().getShort()));
                out.writeString(Base64.getEncoder().encodeToString(bytes(cell.buffer())));
            }
            out.writeEndObject();
        }
    }

    /** Elements added and removed, without the collection's other elements. */
    private static void partialCollection(JsonGenerator out, AbstractType<?> type, ComplexColumnData complex) throws IOException
    {
        AbstractType<?> unwrapped = type.unwrap();
        if (unwrapped instanceof MapType)
        {
            MapType<?, ?> map = (MapType<?, ?>) unwrapped;
            out.writeObjectFieldStart("put");
            for (Cell<?> cell : complex)
                if (!cell.isTombstone())
                {
                    out.writeFieldName(keyText(map.getKeysType(), cell.path().get(0)));
                    value(out, map.getValuesType(), cell.buffer());
                }
            out.writeEndObject();
            out.writeArrayFieldStart("remove");
            for (Cell<?> cell : complex)
                if (cell.isTombstone())
                    value(out, map.getKeysType(), cell.path().get(0));
            out.writeEndArray();
        }
        else if (unwrapped instanceof SetType)
        {
            AbstractType<?> element = ((SetType<?>) unwrapped).getElementsType();
            out.writeArrayFieldStart("add");
            for (Cell<?> cell : complex)
                if (!cell.isTombstone())
                    value(out, element, cell.path().get(0));
            out.writeEndArray();
            out.writeArrayFieldStart("remove");
            for (Cell<?> cell : complex)
                if (cell.isTombstone())
                    value(out, element, cell.path().get(0));
            out.writeEndArray();
        }
        else if (unwrapped instanceof ListType)
        {
            // List cells are keyed by a time UUID: additions are known, removals by index are not.
            AbstractType<?> element = ((ListType<?>) unwrapped).getElementsType();
            out.writeArrayFieldStart("add");
            for (Cell<?> cell : complex)
                if (!cell.isTombstone())
                    value(out, element, cell.buffer());
            out.writeEndArray();
            int removed = 0;
            for (Cell<?> cell : complex)
                if (cell.isTombstone())
                    removed++;
            out.writeNumberField("removed", removed);
        }
    }

    private static byte[] bytes(ByteBuffer buffer)
    {
        ByteBuffer copy = buffer.duplicate();
        byte[] out = new byte[copy.remaining()];
        copy.get(out);
        return out;
    }

    /** A map key as JSON object keys carry it: the text of its JSON value. */
    private static String keyText(AbstractType<?> type, ByteBuffer buffer) throws IOException
    {
        JsonNode node = MAPPER.readTree(valueJson(type, buffer));
        return node.isTextual() ? node.textValue() : node.toString();
    }

    private static String valueJson(AbstractType<?> type, ByteBuffer buffer) throws IOException
    {
        java.io.StringWriter text = new java.io.StringWriter();
        try (JsonGenerator g = MAPPER.getFactory().createGenerator(text))
        {
            value(g, type, buffer);
        }
        return text.toString();
    }

    /** One value of {@code type} (see the class comment for the conventions). */
    @SuppressWarnings({ "rawtypes", "unchecked" })
    static void value(JsonGenerator out, AbstractType<?> declared, ByteBuffer buffer) throws IOException
    {
        AbstractType<?> type = declared.unwrap();  // clustering columns in DESC order are reversed
        if (buffer == null)
        {
            out.writeNull();
            return;
        }
        if (!buffer.hasRemaining() && !(type instanceof UTF8Type || type instanceof AsciiType || type instanceof BytesType))
        {
            out.writeNull();  // an empty value (allowed for most types): no value
            return;
        }
        if (type instanceof UTF8Type || type instanceof AsciiType)
            out.writeString((String) type.compose(buffer));
        else if (type instanceof Int32Type)
            out.writeNumber((Integer) type.compose(buffer));
        else if (type instanceof LongType || type instanceof CounterColumnType)
            out.writeNumber((Long) type.compose(buffer));
        else if (type instanceof ShortType)
            out.writeNumber((Short) type.compose(buffer));
        else if (type instanceof ByteType)
            out.writeNumber((Byte) type.compose(buffer));
        else if (type instanceof IntegerType)
            out.writeNumber((BigInteger) type.compose(buffer));
        else if (type instanceof BooleanType)
            out.writeBoolean((Boolean) type.compose(buffer));
        else if (type instanceof DoubleType)
            floating(out, (Double) type.compose(buffer));
        else if (type instanceof FloatType)
            floating(out, ((Float) type.compose(buffer)).doubleValue());
        else if (type instanceof DecimalType)
            out.writeString(((BigDecimal) type.compose(buffer)).toString());
        else if (type instanceof UUIDType || type instanceof TimeUUIDType)
            // From the 16 bytes: TimeUUIDType composes to Cassandra's own TimeUUID class, not
            // java.util.UUID (a cast failed on every timeuuid).
            out.writeString(new UUID(buffer.getLong(buffer.position()), buffer.getLong(buffer.position() + 8)).toString());
        else if (type instanceof TimestampType)
            out.writeString(ISO_MILLIS.format(Instant.ofEpochMilli(((Date) type.compose(buffer)).getTime())));
        else if (type instanceof SimpleDateType)
        {
            long millis = SimpleDateSerializer.dayToTimeInMillis((Integer) type.compose(buffer));
            out.writeString(LocalDate.ofEpochDay(Math.floorDiv(millis, 86_400_000L)).toString());
        }
        else if (type instanceof BytesType)
            out.writeString(Base64.getEncoder().encodeToString(bytes(buffer)));
        else if (type instanceof InetAddressType)
            out.writeString(((InetAddress) type.compose(buffer)).getHostAddress());
        else if (type instanceof ListType && !type.isMultiCell())
        {
            AbstractType element = ((ListType<?>) type).getElementsType();
            out.writeStartArray();
            for (Object item : (List<?>) type.compose(buffer))
                value(out, element, element.decompose(item));
            out.writeEndArray();
        }
        else if (type instanceof SetType && !type.isMultiCell())
        {
            AbstractType element = ((SetType<?>) type).getElementsType();
            out.writeStartArray();
            for (Object item : (Collection<?>) type.compose(buffer))
                value(out, element, element.decompose(item));
            out.writeEndArray();
        }
        else if (type instanceof MapType && !type.isMultiCell())
        {
            AbstractType keys = ((MapType<?, ?>) type).getKeysType();
            AbstractType values = ((MapType<?, ?>) type).getValuesType();
            out.writeStartObject();
            for (Map.Entry<?, ?> entry : ((Map<?, ?>) type.compose(buffer)).entrySet())
            {
                out.writeFieldName(keyText(keys, keys.decompose(entry.getKey())));
                value(out, values, values.decompose(entry.getValue()));
            }
            out.writeEndObject();
        }
        else
        {
            // tuple, user type, time, duration, vector...: Cassandra's own JSON form.
            out.writeTree(MAPPER.readTree(type.toJSONString(buffer, ProtocolVersion.CURRENT)));
        }
    }

    private static void floating(JsonGenerator out, double value) throws IOException
    {
        if (Double.isNaN(value))
            out.writeString("NaN");
        else if (Double.isInfinite(value))
            out.writeString(value > 0 ? "Infinity" : "-Infinity");
        else
            out.writeNumber(value);
    }
}
