package trio_rt.cdc.agent;

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.StandardWatchEventKinds;
import java.nio.file.ClosedWatchServiceException;
import java.nio.file.WatchEvent;
import java.nio.file.WatchKey;
import java.nio.file.WatchService;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.CRC32;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.util.TokenBuffer;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import org.apache.cassandra.config.Config;
import org.apache.cassandra.config.DatabaseDescriptor;
import org.apache.cassandra.db.Mutation;
import org.apache.cassandra.db.partitions.PartitionUpdate;
import org.apache.cassandra.db.commitlog.CommitLogDescriptor;
import org.apache.cassandra.db.commitlog.CommitLogReadHandler;
import org.apache.cassandra.db.commitlog.CommitLogSegmentReader;
import org.apache.cassandra.db.rows.DeserializationHelper;
import org.apache.cassandra.exceptions.UnknownTableException;
import org.apache.cassandra.io.util.DataInputBuffer;
import org.apache.cassandra.io.util.FileDataInput;
import org.apache.cassandra.io.util.RandomAccessReader;
import org.apache.cassandra.schema.Schema;
import org.apache.cassandra.schema.TableId;
import org.apache.cassandra.utils.FBUtilities;

/**
 * The trio_rt CDC agent: follows one node's {@code cdc_raw} directory and hands every change
 * of a CDC table to one consumer over a local TCP socket, as JSON lines (docs/cdc.md).
 *
 * <ul>
 *   <li>Watches {@code cdc_raw} (inotify on Linux: Java's {@code WatchService}) and reads as
 *       soon as Cassandra links a segment or rewrites an idx file, with a poll every
 *       {@code --fallback-poll-ms} for what a watch may miss; with {@code --watch off}, or where
 *       the directory cannot be watched, it polls every {@code --poll-ms}.</li>
 *   <li>Reads each segment only up to the durable offset its {@code _cdc.idx} file names,
 *       resuming at the sync marker where it stopped (uncompressed segments: the segment stays
 *       open from one read to the next), with Cassandra's own section reader and mutation
 *       serializer. It lists {@code cdc_raw} again only when the watch reports a file linked
 *       or removed (and at the fallback poll); a commit-log sync only makes it re-read the
 *       idx files of the segments it has not finished.</li>
 *   <li>Sends batches of changes, at most {@code --window} unacknowledged; a batch's end
 *       (segment, offset) becomes the checkpoint only once the consumer acknowledged it. The
 *       checkpoint is written durably at most every {@code --checkpoint-ms} (and at once when
 *       it finishes a segment, before that segment is deleted). A new consumer starts again
 *       at the checkpoint, a restarted agent at the file's, which may trail it by that much:
 *       what was sent and not acknowledged is sent again (the consumer de-duplicates). The
 *       hello names {@code resend_until}: no batch was ever sent past it, so a consumer needs
 *       to look for what it stored before only in batches that start before it. A batch
 *       without changes (only other tables' writes were passed) is sent only to move the
 *       checkpoint, no sooner than {@code --progress-ms} after the last batch (a batch
 *       with changes carries that progress anyway).</li>
 *   <li>Deletes every COMPLETED segment (and its idx) the checkpoint has passed, so that
 *       {@code cdc_raw} does not fill: when it does, Cassandra rejects writes to CDC tables.
 *       Logs a warning, and reports {@code alert: true} in its stats, while {@code cdc_raw}
 *       holds more than {@code --alert-fraction} of {@code cdc_total_space}.</li>
 *   <li>Decodes with the schema read from the node's {@code system_schema} tables at start.
 *       When they change (a new table, an ALTER), the agent exits with status 75 after its
 *       current batch: the launcher starts it again, with the new schema, from its
 *       checkpoint.</li>
 * </ul>
 */
public final class Agent
{
    static final int PROTOCOL = 1;
    static final int EXIT_SCHEMA_CHANGED = 75;
    static final int EXIT_USAGE = 2;
    private static final Logger log = LoggerFactory.getLogger(Agent.class);
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final Pattern SEGMENT = Pattern.compile("CommitLog-(\\d+)-(\\d+)\\.log");
    private static final int SYNC_MARKER_SIZE = 8;

    // -- options ------------------------------------------------------------------------------
    private final String host;
    private final int port;
    private final Path stateDir;
    private final long pollMillis;
    private final boolean watch;
    private final long fallbackPollMillis;
    /** A batch without changes (the reading passed only other tables' writes: it moves the
     *  checkpoint) is sent at most this long after the last batch; a batch with changes
     *  carries that progress too. */
    private final long progressMillis;
    /** The checkpoint file is written at most this often: an fsync (two, with the
     *  directory's) per acknowledged batch was a third of the agent's CPU. What it trails by
     *  is sent again after a restart, inside resend_until, and de-duplicated. */
    private final long checkpointMillis;
    private final int window;
    private final int batchMax;
    private final double alertFraction;
    private final String node;

    // -- what Cassandra's config says -----------------------------------------------------------
    private final Path cdcRaw;
    private final List<Path> schemaDirs = new ArrayList<>();
    private final long totalSpace;
    private final Set<String> schemaFiles;

    // -- the checkpoint file (written under saveLock; read without it) -----------------------------
    private final Object saveLock = new Object();
    /** What the checkpoint file holds: segments are deleted only once it has passed them. */
    private volatile Cursor saved;
    private volatile long savedAt;
    private volatile long saves;

    // -- state (guarded by this) -----------------------------------------------------------------
    /** What the consumer acknowledged; the file follows (saveCheckpoint). */
    private Cursor checkpoint;
    /** The furthest (segment, position) any batch may have been sent to: what this agent
     *  sent to any consumer, and at start everything a previous run of the agent could have
     *  sent (the newest segment up to its durable offset). A consumer stores a change from
     *  beyond it for the first time (docs/cdc.md "Re-sends"). */
    private long resendSegment;
    private long resendPosition;
    private Consumer consumer;
    private long seq;
    private boolean alerting;
    private long cdcRawBytes;
    private int segments;
    private long lastStats;
    private long lastSchemaCheck;
    private long skippedUnknown;
    private long skippedUndecodable;
    /** Tests only ({@code --fail-decode KEYSPACE.TABLE}): decoding a mutation of that table
     *  fails, as a bug or an unknown type would make it. */
    private final String failDecode;
    private long errors;
    private final Set<TableId> unknownTables = new HashSet<>();
    /** Segments without CDC data whose commit-log copy is gone, and since when (ms). */
    private final Map<Path, Long> orphans = new HashMap<>();
    /** How long such a segment must stay before this agent deletes it itself. */
    static final long ORPHAN_GRACE_MS = 10_000;
    private volatile boolean stopping;
    /** Something the reading loop waits for happened since it last looked (cdc_raw changed,
     *  an acknowledgement, a consumer came or went): read again before waiting. Guarded by
     *  this; set with {@link #wakeReader}. */
    private boolean wake;
    /** The watch on cdc_raw is running: the loop then waits up to {@code fallbackPollMillis}. */
    private volatile boolean watching;
    /** A file was linked into or removed from cdc_raw (or the watch may have missed events)
     *  since the reading loop last listed it: list it again. While it stays false the loop
     *  reads on from its last listing, re-reading only the idx files of the segments it has
     *  not finished (what a commit-log sync rewrites). Set by the watch, by the fallback poll
     *  and by this agent's own deletions. */
    private volatile boolean relist = true;
    /** The reading loop's last listing of cdc_raw (its thread only). */
    private TreeMap<Long, Segment> listed;
    /** The segment the reading loop has open (its thread only): kept between reads of an
     *  uncompressed segment, which resume at a sync marker; closed when it is done. */
    private OpenSegment open;
    /** Stats (guarded by this): listings of cdc_raw and segment opens by the reading loop,
     *  and its reads (passes that found something durable to read). */
    private long listings;
    private long segmentOpens;
    private long reads;

    /** Where reading is: a segment, the sync marker to start the next read at (-1: after the
     *  header) and the end offset of the last mutation handed over; {@code done} once the
     *  segment is COMPLETED and read to its end. */
    static final class Cursor
    {
        final long segment;
        final long marker;
        final long position;
        final boolean done;

        Cursor(long segment, long marker, long position, boolean done)
        {
            this.segment = segment;
            this.marker = marker;
            this.position = position;
            this.done = done;
        }

        boolean same(Cursor other)
        {
            return segment == other.segment && marker == other.marker && position == other.position && done == other.done;
        }

        @Override
        public String toString()
        {
            return segment + ":" + position + (done ? " (done)" : "");
        }
    }

    /** A batch sent and not acknowledged yet. */
    private static final class Pending
    {
        final long seq;
        final Cursor after;

        Pending(long seq, Cursor after)
        {
            this.seq = seq;
            this.after = after;
        }
    }

    /** The one connected consumer: its socket, where reading for it is, what it has not acked. */
    private final class Consumer
    {
        final Socket socket;
        final OutputStream out;
        Cursor cursor;
        final ArrayDeque<Pending> pending = new ArrayDeque<>();
        /** The cursor passed only other tables' writes since the last batch sent: the
         *  checkpoint has yet to follow (a batch without changes, see progressMillis). */
        boolean unsent;
        /** When the last batch was sent, or the consumer connected (ms). */
        long lastSent = System.currentTimeMillis();
        volatile boolean closed;

        Consumer(Socket socket, Cursor cursor) throws IOException
        {
            this.socket = socket;
            this.out = socket.getOutputStream();
            this.cursor = cursor;
        }

        void send(byte[] line) throws IOException
        {
            synchronized (out)
            {
                out.write(line);
                out.flush();
            }
        }

        void close()
        {
            closed = true;
            try
            {
                socket.close();
            }
            catch (IOException ignored)
            {
            }
        }
    }

    private Agent(String host, int port, Path stateDir, long pollMillis, boolean watch, long fallbackPollMillis,
                  long progressMillis, long checkpointMillis, int window, int batchMax,
                  double alertFraction, String node, Path cdcRaw, List<Path> schemaDirs, long totalSpace,
                  Set<String> schemaFiles, String failDecode)
        throws IOException
    {
        this.failDecode = failDecode;
        this.host = host;
        this.port = port;
        this.stateDir = stateDir;
        this.pollMillis = pollMillis;
        this.watch = watch;
        this.fallbackPollMillis = fallbackPollMillis;
        this.progressMillis = progressMillis;
        this.checkpointMillis = checkpointMillis;
        this.window = window;
        this.batchMax = batchMax;
        this.alertFraction = alertFraction;
        this.node = node;
        this.cdcRaw = cdcRaw;
        this.schemaDirs.addAll(schemaDirs);
        this.totalSpace = totalSpace;
        this.schemaFiles = schemaFiles;
        this.checkpoint = loadCheckpoint();
        this.saved = checkpoint;
        startingResendBound();
    }

    /** At start: a previous run of this agent sent nothing past the durable offset (as it is
     *  now) of the newest segment that has an idx file (nothing is read from a segment
     *  without one; Cassandra creates the next segment before it is used). Positions in
     *  compressed or encrypted segments are not file offsets: all of that segment then. */
    private void startingResendBound() throws IOException
    {
        resendSegment = checkpoint.segment;
        resendPosition = checkpoint.position;
        Segment newest = null;
        for (Segment segment : listSegments().values())
        {
            if (segment.durable >= 0 || Files.exists(segment.idx))
                newest = segment;
        }
        if (newest == null)
            return;
        boolean plain = DatabaseDescriptor.getCommitLogCompression() == null
                        && !DatabaseDescriptor.getEncryptionContext().isEnabled();
        // An idx read while Cassandra rewrites it (empty) says nothing: all of the segment.
        advanceResendBound(newest.id, plain && newest.durable >= 0 ? newest.durable : Long.MAX_VALUE);
    }

    private void advanceResendBound(long segment, long position)
    {
        if (segment > resendSegment || (segment == resendSegment && position > resendPosition))
        {
            resendSegment = segment;
            resendPosition = position;
        }
    }

    // -- entry point ------------------------------------------------------------------------------
    public static void main(String[] args) throws Exception
    {
        String yaml = null, host = "127.0.0.1", stateDir = null, node = null, failDecode = null;
        int port = 9044, window = 4, batchMax = 1000;
        long pollMillis = 5, fallbackPollMillis = 100, progressMillis = 100, checkpointMillis = 50;
        boolean watch = true;
        double alertFraction = 0.5;
        for (int i = 0; i < args.length; i++)
        {
            String arg = args[i];
            String value = i + 1 < args.length ? args[i + 1] : null;
            if (value == null && !arg.equals("--help"))
                usage("missing value for " + arg);
            switch (arg)
            {
                case "--cassandra-yaml": yaml = value; i++; break;
                case "--host": host = value; i++; break;
                case "--port": port = Integer.parseInt(value); i++; break;
                case "--state-dir": stateDir = value; i++; break;
                case "--node": node = value; i++; break;
                case "--poll-ms": pollMillis = Long.parseLong(value); i++; break;
                case "--fallback-poll-ms": fallbackPollMillis = Long.parseLong(value); i++; break;
                case "--progress-ms": progressMillis = Long.parseLong(value); i++; break;
                case "--checkpoint-ms": checkpointMillis = Long.parseLong(value); i++; break;
                case "--watch":
                    if (!value.equals("on") && !value.equals("off"))
                        usage("--watch is on or off");
                    watch = value.equals("on");
                    i++;
                    break;
                case "--window": window = Integer.parseInt(value); i++; break;
                case "--batch-max": batchMax = Integer.parseInt(value); i++; break;
                case "--alert-fraction": alertFraction = Double.parseDouble(value); i++; break;
                case "--fail-decode": failDecode = value; i++; break;
                case "--help": usage(null); break;
                default: usage("unknown option " + arg);
            }
        }
        if (yaml == null || stateDir == null)
            usage("--cassandra-yaml and --state-dir are required");
        if (System.getProperty("cassandra.config") == null)
            System.setProperty("cassandra.config", Path.of(yaml).toAbsolutePath().toUri().toString());
        DatabaseDescriptor.toolInitialization();
        if (!DatabaseDescriptor.isCDCEnabled())
            log.warn("cdc_enabled is false in {}: no segment will ever reach cdc_raw", yaml);
        Path cdcRaw = Path.of(DatabaseDescriptor.getCDCLogLocation());
        List<Path> schemaDirs = new ArrayList<>();
        for (String location : DatabaseDescriptor.getAllDataFileLocations())
            schemaDirs.add(Path.of(location, "system_schema"));
        if (node == null)
        {
            // Tool mode resolves no addresses: the configured ones name the node.
            Config raw = DatabaseDescriptor.getRawConfig();
            String address = raw.listen_address != null ? raw.listen_address : raw.listen_interface;
            node = (address != null ? address : "localhost") + ":" + raw.storage_port;
        }
        // Listed BEFORE loading: a schema change during or after the load then differs from
        // this list and restarts the agent. Listed after, a table created meanwhile would be
        // unknown to this agent for good and its changes skipped as "dropped".
        Set<String> schemaFiles = listSchemaFiles(schemaDirs);
        long started = System.nanoTime();
        Schema.instance.loadFromDisk();
        log.info("schema loaded in {} ms", (System.nanoTime() - started) / 1_000_000);
        Files.createDirectories(Path.of(stateDir));
        Agent agent = new Agent(host, port, Path.of(stateDir), pollMillis, watch, fallbackPollMillis, progressMillis,
                                checkpointMillis, window,
                                batchMax, alertFraction,
                                node, cdcRaw, schemaDirs, DatabaseDescriptor.getCDCTotalSpace(), schemaFiles,
                                failDecode);
        System.exit(agent.run());
    }

    private static void usage(String problem)
    {
        if (problem != null)
            System.err.println("trio_rt cdc agent: " + problem);
        System.err.println("usage: Agent --cassandra-yaml PATH --state-dir DIR [--host 127.0.0.1] [--port 9044]"
                           + " [--node NAME] [--watch on] [--fallback-poll-ms 100] [--poll-ms 5] [--window 4]"
                           + " [--progress-ms 100] [--checkpoint-ms 50] [--batch-max 1000] [--alert-fraction 0.5]"
                           + " [--fail-decode KEYSPACE.TABLE (tests only)]");
        System.exit(problem == null ? 0 : EXIT_USAGE);
    }

    private int run() throws Exception
    {
        ServerSocket server = new ServerSocket();
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(InetAddress.getByName(host), port));
        Thread acceptor = new Thread(() -> accept(server), "accept");
        acceptor.setDaemon(true);
        acceptor.start();
        if (watch)
            startWatch();
        // The launcher waits for this line: the socket is bound, the schema loaded.
        log.info("listening on {}:{} (node {}, cdc_raw {}, checkpoint {})", host, server.getLocalPort(), node, cdcRaw, checkpoint);
        while (!stopping)
        {
            long now = System.currentTimeMillis();
            if (now - lastSchemaCheck >= 500)
            {
                lastSchemaCheck = now;
                if (schemaChanged())
                {
                    log.info("the schema changed: exiting to be started again with it (status {})", EXIT_SCHEMA_CHANGED);
                    saveCheckpoint(0);
                    return EXIT_SCHEMA_CHANGED;
                }
            }
            if (now - lastStats >= 1000)
            {
                lastStats = now;
                stats();
                // Acknowledgements delete what they pass; this catches the leftovers whose
                // grace period ends while nothing is acknowledged.
                deleteConsumed(followCheckpoint(checkpointMillis));
            }
            else
            {
                // An acknowledgement left the file behind (written less than checkpointMillis
                // before): it follows here, without an acknowledgement to trigger it.
                followCheckpoint(checkpointMillis);
            }
            boolean progressed = false;
            synchronized (this)
            {
                wake = false;  // what happens from here on is seen by this read or wakes the next
            }
            try
            {
                progressed = step();
            }
            catch (IOException | RuntimeException e)
            {
                synchronized (this)
                {
                    errors++;
                }
                log.warn("reading cdc_raw failed (again at the next poll): {}", e.toString());
            }
            if (!progressed)
            {
                synchronized (this)
                {
                    if (!wake)
                    {
                        wait(watching ? fallbackPollMillis : pollMillis);
                        // Woken by nothing: the fallback poll, for what a watch may miss
                        // (a lost event, an overflow): list cdc_raw again.
                        if (!wake)
                            relist = true;
                    }
                }
            }
        }
        return 0;
    }

    /** Wakes the reading loop (the caller holds this): it reads again at once. */
    private void wakeReader()
    {
        wake = true;
        notifyAll();
    }

    // -- watching cdc_raw ---------------------------------------------------------------------------
    /** Starts the thread that wakes the reading loop whenever a file in cdc_raw is created or
     *  modified (a segment linked, an idx rewritten at a commit-log sync). Where the directory
     *  cannot be watched, the loop keeps polling every {@code --poll-ms}. */
    private void startWatch()
    {
        WatchService service;
        try
        {
            service = cdcRaw.getFileSystem().newWatchService();
            cdcRaw.register(service, StandardWatchEventKinds.ENTRY_CREATE, StandardWatchEventKinds.ENTRY_MODIFY,
                            StandardWatchEventKinds.ENTRY_DELETE);
        }
        catch (IOException | UnsupportedOperationException e)
        {
            log.warn("cannot watch {} ({}): polling it every {} ms instead", cdcRaw, e.toString(), pollMillis);
            return;
        }
        watching = true;
        Thread watcher = new Thread(() -> watch(service), "watch");
        watcher.setDaemon(true);
        watcher.start();
        log.info("watching {} (and polling it every {} ms)", cdcRaw, fallbackPollMillis);
    }

    private void watch(WatchService service)
    {
        try
        {
            while (!stopping)
            {
                WatchKey key = service.take();
                // An idx file rewritten (a commit-log sync) needs no listing: the next read
                // re-reads the idx files of the segments it has not finished. Anything else
                // (a file linked or removed, an OVERFLOW) does.
                for (WatchEvent<?> event : key.pollEvents())
                {
                    if (event.kind() != StandardWatchEventKinds.ENTRY_MODIFY
                        || !(event.context() instanceof Path)
                        || !((Path) event.context()).getFileName().toString().endsWith("_cdc.idx"))
                        relist = true;
                }
                boolean valid = key.reset();
                synchronized (this)
                {
                    wakeReader();
                }
                if (!valid)
                {
                    log.warn("{} can no longer be watched: polling it every {} ms instead", cdcRaw, pollMillis);
                    return;
                }
            }
        }
        catch (InterruptedException | ClosedWatchServiceException e)
        {
            log.warn("watching {} stopped ({}): polling it every {} ms instead", cdcRaw, e.toString(), pollMillis);
        }
        finally
        {
            watching = false;
            try
            {
                service.close();
            }
            catch (IOException ignored)
            {
            }
        }
    }

    // -- the consumer -----------------------------------------------------------------------------
    private void accept(ServerSocket server)
    {
        while (!stopping)
        {
            Socket socket;
            try
            {
                socket = server.accept();
                socket.setTcpNoDelay(true);
            }
            catch (IOException e)
            {
                log.warn("accept failed: {}", e.toString());
                continue;
            }
            Consumer c;
            synchronized (this)
            {
                if (consumer != null && !consumer.closed)
                {
                    refuse(socket);
                    continue;
                }
                try
                {
                    c = new Consumer(socket, checkpoint);
                    c.send(line(g -> {
                        g.writeStringField("type", "hello");
                        g.writeNumberField("protocol", PROTOCOL);
                        g.writeStringField("node", node);
                        g.writeStringField("cassandra", FBUtilities.getReleaseVersionString());
                        g.writeObjectFieldStart("checkpoint");
                        g.writeNumberField("segment", checkpoint.segment);
                        g.writeNumberField("position", checkpoint.position);
                        g.writeEndObject();
                        g.writeObjectFieldStart("resend_until");
                        g.writeNumberField("segment", resendSegment);
                        g.writeNumberField("position", resendPosition);
                        g.writeEndObject();
                    }));
                }
                catch (IOException e)
                {
                    log.warn("greeting the consumer failed: {}", e.toString());
                    closeQuietly(socket);
                    continue;
                }
                consumer = c;
                lastStats = 0;  // stats at once
                wakeReader();
            }
            log.info("consumer connected from {}", socket.getRemoteSocketAddress());
            Thread reader = new Thread(() -> readAcks(c), "consumer");
            reader.setDaemon(true);
            reader.start();
        }
    }

    private void refuse(Socket socket)
    {
        try
        {
            socket.getOutputStream().write(line(g -> {
                g.writeStringField("type", "error");
                g.writeStringField("message", "another consumer is connected");
            }));
        }
        catch (IOException ignored)
        {
        }
        closeQuietly(socket);
    }

    private static void closeQuietly(Socket socket)
    {
        try
        {
            socket.close();
        }
        catch (IOException ignored)
        {
        }
    }

    private void readAcks(Consumer c)
    {
        try (BufferedReader in = new BufferedReader(new InputStreamReader(c.socket.getInputStream(), StandardCharsets.UTF_8)))
        {
            String text;
            while ((text = in.readLine()) != null)
            {
                JsonNode message = MAPPER.readTree(text);
                if (!"ack".equals(message.path("type").asText()))
                    continue;
                acknowledged(c, message.path("seq").asLong(-1));
            }
        }
        catch (IOException e)
        {
            if (!c.closed)
                log.info("consumer connection ended: {}", e.toString());
        }
        finally
        {
            synchronized (this)
            {
                c.close();
                if (consumer == c)
                    consumer = null;
                wakeReader();
            }
            log.info("consumer disconnected; what it did not acknowledge is sent again to the next one");
            followCheckpoint(0);
        }
    }

    private void acknowledged(Consumer c, long acked) throws IOException
    {
        Cursor next = null;
        Cursor before;
        synchronized (this)
        {
            while (!c.pending.isEmpty() && c.pending.peekFirst().seq <= acked)
                next = c.pending.pollFirst().after;
            if (next == null)
                return;
            before = checkpoint;
            checkpoint = next;
            wakeReader();
        }
        // Only a checkpoint that finished a segment frees one (the main loop's once a second
        // clean-up takes the rest): not a listing of cdc_raw per acknowledgement. The file
        // goes first, at once: a segment is deleted only once the file has passed it.
        if (next.segment != before.segment || next.done != before.done)
            deleteConsumed(saveCheckpoint(0));
        else
            saveCheckpoint(checkpointMillis);
    }

    // -- reading ----------------------------------------------------------------------------------
    /** One segment file in cdc_raw, with what its idx said. */
    private static final class Segment
    {
        final long id;
        final Path log;
        final Path idx;
        long durable = -1;  // -1: no idx (no CDC data in it, or not yet)
        boolean idxExists;  // at the last read of it (possibly empty: being rewritten)
        boolean completed;

        Segment(long id, Path log, Path idx)
        {
            this.id = id;
            this.log = log;
            this.idx = idx;
        }
    }

    private TreeMap<Long, Segment> listSegments() throws IOException
    {
        TreeMap<Long, Segment> found = new TreeMap<>();
        try (DirectoryStream<Path> files = Files.newDirectoryStream(cdcRaw, "CommitLog-*.log"))
        {
            for (Path file : files)
            {
                Matcher m = SEGMENT.matcher(file.getFileName().toString());
                if (!m.matches())
                    continue;
                long id = Long.parseLong(m.group(2));
                Path idx = cdcRaw.resolve("CommitLog-" + m.group(1) + "-" + m.group(2) + "_cdc.idx");
                found.put(id, new Segment(id, file, idx));
            }
        }
        for (Segment segment : found.values())
            readIdx(segment);
        return found;
    }

    /** The idx file: the durable offset, then a line COMPLETED once the segment is closed. It
     *  is rewritten in place (truncated, then written): an empty or partial read is "not yet". */
    private static void readIdx(Segment segment) throws IOException
    {
        List<String> lines;
        try
        {
            lines = Files.readAllLines(segment.idx, StandardCharsets.UTF_8);
        }
        catch (NoSuchFileException e)
        {
            return;
        }
        segment.idxExists = true;
        if (lines.isEmpty())
            return;
        try
        {
            segment.durable = Long.parseLong(lines.get(0).trim());
        }
        catch (NumberFormatException e)
        {
            return;
        }
        segment.completed = lines.size() > 1 && lines.get(1).trim().equals("COMPLETED");
    }

    /** Reads what is new for the consumer and sends it as one batch; true if it did. */
    private boolean step() throws IOException
    {
        Consumer c;
        Cursor from;
        synchronized (this)
        {
            c = consumer;
            if (c == null || c.closed || c.pending.size() >= window)
                return false;
            from = c.cursor;
        }
        ByteArrayOutputStream changes = new ByteArrayOutputStream();
        int[] count = new int[1];
        Cursor to;
        try (JsonGenerator g = MAPPER.getFactory().createGenerator(changes))
        {
            g.writeStartArray();
            to = read(from, g, count);
            g.writeEndArray();
        }
        boolean moved = !to.same(from);
        long now = System.currentTimeMillis();
        synchronized (this)
        {
            if (consumer != c || c.closed)
                return false;
            if (count[0] == 0)
            {
                // Only other tables' writes (the commit log is shared): nothing to hand over,
                // only the checkpoint to move. That waits for the next batch with changes, or
                // progressMillis since the last batch sent, so that a node busy with other
                // tables does not cost a batch, an ack and a checkpoint write per sync
                // (--progress-ms).
                if (moved)
                {
                    c.cursor = to;
                    c.unsent = true;
                }
                if (!c.unsent || now - c.lastSent < progressMillis)
                    return moved;
            }
            else if (!moved)
            {
                return false;
            }
            long n = ++seq;
            byte[] body = changes.toByteArray();
            byte[] message = line(g -> {
                g.writeStringField("type", "batch");
                g.writeNumberField("seq", n);
                g.writeNumberField("segment", to.segment);
                g.writeNumberField("position", to.position);
                g.writeFieldName("changes");
                g.writeRawValue(new String(body, StandardCharsets.UTF_8));
            });
            c.pending.addLast(new Pending(n, to));
            c.cursor = to;
            c.unsent = false;
            c.lastSent = now;
            advanceResendBound(to.segment, to.position);
            try
            {
                c.send(message);
            }
            catch (IOException e)
            {
                c.close();
            }
        }
        return true;
    }

    /** Reads from {@code from} up to what the idx files say is durable, writing changes to
     *  {@code out} (at most about {@code batchMax}); returns where it got to. */
    private Cursor read(Cursor from, JsonGenerator out, int[] count) throws IOException
    {
        TreeMap<Long, Segment> segments = segments(from);
        if (open != null && !segments.containsKey(open.id))
            closeOpen();
        Cursor cursor = from;
        if (!cursor.done && !segments.containsKey(cursor.segment))
        {
            log.warn("segment {} of the checkpoint is gone from cdc_raw: going on with the next one", cursor.segment);
            cursor = new Cursor(cursor.segment, -1, 0, true);
        }
        for (Segment segment : segments.values())
        {
            if (segment.id < cursor.segment || (segment.id == cursor.segment && cursor.done))
                continue;
            if (segment.id > cursor.segment)
            {
                if (!cursor.done && cursor.segment != 0)
                    break;  // the current segment is not finished
                if (segment.durable < 0)
                {
                    // No idx: no CDC data in it, or not yet. A segment's idx, if any, is written
                    // no later than its close, and a later segment's idx only after that: with
                    // a later idx seen, a segment still without one never gets one.
                    boolean later = segments.tailMap(segment.id, false).values().stream().anyMatch(s -> s.durable >= 0);
                    if (!later || Files.exists(segment.idx))
                        break;
                    cursor = new Cursor(segment.id, -1, 0, true);
                    continue;
                }
                cursor = new Cursor(segment.id, -1, 0, false);
            }
            if (segment.durable < 0)
                break;
            cursor = readSegment(segment, cursor, out, count);
            if (!cursor.done)
                break;
        }
        return cursor;
    }

    /** cdc_raw's segments with what their idx files say: listed again when {@link #relist}
     *  says so (or without a watch: every time); otherwise the last listing, with the idx
     *  files of the segments not finished (from {@code from}'s on) read again. */
    private TreeMap<Long, Segment> segments(Cursor from) throws IOException
    {
        if (listed == null || relist || !watching)
        {
            relist = false;  // before listing: a change from here on lists again next time
            listed = listSegments();
            synchronized (this)
            {
                listings++;
            }
            return listed;
        }
        // Only the idx files that existed at the listing: one created since is a file linked
        // into cdc_raw (the watch reports it, and the loop lists again).
        for (Segment segment : listed.tailMap(from.segment, true).values())
        {
            if (!segment.completed && segment.idxExists)
                readIdx(segment);
        }
        return listed;
    }

    /** The segment the reading loop keeps open, with its header. */
    private static final class OpenSegment
    {
        final long id;
        final RandomAccessReader reader;
        final CommitLogDescriptor descriptor;
        final long headerEnd;
        final boolean plain;

        OpenSegment(long id, RandomAccessReader reader, CommitLogDescriptor descriptor, long headerEnd, boolean plain)
        {
            this.id = id;
            this.reader = reader;
            this.descriptor = descriptor;
            this.headerEnd = headerEnd;
            this.plain = plain;
        }
    }

    private void closeOpen()
    {
        if (open != null)
        {
            open.reader.close();
            open = null;
        }
    }

    /** {@code segment} open, reusing the reader of the last read when it was the same one. */
    private OpenSegment openSegment(Segment segment) throws IOException
    {
        // (A file that grew past what the reader saw at its open is opened again; Cassandra's
        // memory-mapped segments have their full size from the start.)
        if (open != null && open.id == segment.id && open.reader.length() >= segment.durable)
            return open;
        closeOpen();
        RandomAccessReader reader = RandomAccessReader.open(new org.apache.cassandra.io.util.File(segment.log));
        try
        {
            CommitLogDescriptor descriptor = CommitLogDescriptor.readHeader(reader, DatabaseDescriptor.getEncryptionContext());
            if (descriptor == null)
                throw new IOException("unreadable commit log header in " + segment.log);
            boolean plain = descriptor.compression == null && !descriptor.getEncryptionContext().isEnabled();
            open = new OpenSegment(segment.id, reader, descriptor, reader.getFilePointer(), plain);
        }
        catch (IOException | RuntimeException e)
        {
            reader.close();
            throw e;
        }
        synchronized (this)
        {
            segmentOpens++;
        }
        return open;
    }

    private Cursor readSegment(Segment segment, Cursor cursor, JsonGenerator out, int[] count) throws IOException
    {
        long durable = segment.durable;
        if (cursor.position >= durable && cursor.marker >= durable)
        {
            if (!segment.completed)
                return cursor;
            if (open != null && open.id == segment.id)
                closeOpen();
            return new Cursor(segment.id, cursor.marker, cursor.position, true);
        }
        synchronized (this)
        {
            reads++;
        }
        boolean keep = false;
        try
        {
            OpenSegment opened = openSegment(segment);
            RandomAccessReader reader = opened.reader;
            CommitLogDescriptor descriptor = opened.descriptor;
            long headerEnd = opened.headerEnd;
            boolean plain = opened.plain;
            Cursor result = readOpen(segment, cursor, out, count, reader, descriptor, headerEnd, plain);
            // Uncompressed segments resume at a sync marker: the reader stays open for the
            // next read until the segment is done. Others are read from their header each
            // time, with a fresh reader (their segmenter keeps state of its own).
            keep = plain && !result.done;
            return result;
        }
        finally
        {
            if (!keep)
                closeOpen();
        }
    }

    private Cursor readOpen(Segment segment, Cursor cursor, JsonGenerator out, int[] count, RandomAccessReader reader,
                            CommitLogDescriptor descriptor, long headerEnd, boolean plain) throws IOException
    {
        long durable = segment.durable;
        // Compressed or encrypted segments count logical positions from the header: read
        // them from there and skip what was handed over.
        long marker = plain && cursor.marker >= 0 ? cursor.marker : headerEnd;
        long position = cursor.position;
        Sections sections = Sections.from(new Handler(), descriptor, reader, marker);
        Iterator<CommitLogSegmentReader.SyncSegment> it = sections.iterator();
        boolean ended = false;
        boolean exhausted = false;
        // Never ask for a sync marker at or past the durable offset: the next sync may be
        // writing it (and a bad marker would make Cassandra's iterator retry forever).
        while (marker < durable)
        {
            if (!it.hasNext())
            {
                exhausted = true;  // no section after this one
                break;
            }
            CommitLogSegmentReader.SyncSegment section = it.next();
            if (section.fileEndPosition > durable)
                break;  // not synced yet
            long sectionMarker = section.fileStartPosition - SYNC_MARKER_SIZE;
            Section result = readSection(section, descriptor, position, out, count);
            position = Math.max(position, result.position);
            if (result.full)
            {
                // Stopped inside this section: resume at its marker, skipping what went.
                return new Cursor(segment.id, plain ? sectionMarker : -1, position, false);
            }
            marker = section.fileEndPosition;
            position = Math.max(position, section.endPosition);
            if (result.ended)
            {
                ended = true;
                break;
            }
        }
        // A completed segment is done at its end-of-segment marker, at its durable
        // offset, or where its sections end (after a crash the node replays the segment
        // and marks it COMPLETED with the file's whole length as durable offset).
        boolean done = segment.completed && (ended || exhausted || marker >= durable);
        return new Cursor(segment.id, plain ? marker : -1, position, done);
    }

    private static final class Section
    {
        long position;
        boolean full;
        boolean ended;
    }

    /** The mutations of one sync section: size, size CRC, the serialized mutation, CRC over
     *  size and mutation (Cassandra's commit-log entry format); a size of 0 ends the segment. */
    private Section readSection(CommitLogSegmentReader.SyncSegment section, CommitLogDescriptor descriptor, long after,
                                JsonGenerator out, int[] count) throws IOException
    {
        Section result = new Section();
        FileDataInput input = section.input;
        CRC32 crc = new CRC32();
        byte[] buffer = new byte[4096];
        while (input.getFilePointer() < section.endPosition && !input.isEOF())
        {
            long start = input.getFilePointer();
            if (section.endPosition - start < 4)
                break;
            int size = input.readInt();
            if (size == 0)
            {
                result.ended = true;
                break;
            }
            long sizeChecksum = input.readInt() & 0xffffffffL;
            crc.reset();
            FBUtilities.updateChecksumInt(crc, size);
            if (size < 10 || crc.getValue() != sizeChecksum)
            {
                corrupt(descriptor, start, "entry size");
                break;
            }
            if (size > buffer.length)
                buffer = new byte[(int) (size * 1.2)];
            input.readFully(buffer, 0, size);
            long checksum = input.readInt() & 0xffffffffL;
            crc.update(buffer, 0, size);
            if (crc.getValue() != checksum)
            {
                corrupt(descriptor, start, "entry");
                break;
            }
            long end = input.getFilePointer();
            if (end <= after)
                continue;  // handed over before
            count[0] += decode(buffer, size, descriptor, start, out);
            result.position = end;
            if (count[0] >= batchMax)
            {
                result.full = input.getFilePointer() < section.endPosition;
                if (result.full)
                    break;
            }
        }
        return result;
    }

    private void corrupt(CommitLogDescriptor descriptor, long at, String what)
    {
        synchronized (this)
        {
            errors++;
        }
        log.error("checksum mismatch of an {} at {} in {}: skipping the rest of that section", what, at, descriptor.fileName());
    }

    private int decode(byte[] buffer, int size, CommitLogDescriptor descriptor, long at, JsonGenerator out)
        throws IOException
    {
        Mutation mutation;
        try (DataInputBuffer in = new DataInputBuffer(buffer, 0, size))
        {
            mutation = Mutation.serializer.deserialize(in, descriptor.getMessagingVersion(), DeserializationHelper.Flag.LOCAL);
        }
        catch (UnknownTableException e)
        {
            // A table created after this agent loaded the schema (its mutation can be read
            // before the next periodic check sees system_schema change): start again with the
            // new schema, from the checkpoint; nothing past this mutation was acknowledged.
            if (schemaChanged())
            {
                log.info("a mutation of a table created since the schema was loaded: exiting to reload it (status {})", EXIT_SCHEMA_CHANGED);
                System.exit(EXIT_SCHEMA_CHANGED);
            }
            // The schema is unchanged, so the table was dropped before it was loaded.
            synchronized (this)
            {
                skippedUnknown++;
                if (e.id != null && unknownTables.add(e.id))
                    log.warn("a mutation of an unknown table {} was skipped (dropped?)", e.id);
            }
            return 0;
        }
        catch (IOException | RuntimeException e)
        {
            return undecodable(descriptor, at, e);
        }
        // Into a buffer first: a failure part way must not leave half a change in the batch.
        TokenBuffer changes = new TokenBuffer(MAPPER, false);
        int count;
        try
        {
            if (failDecode != null)
            {
                for (PartitionUpdate update : mutation.getPartitionUpdates())
                {
                    if (failDecode.equals(update.metadata().keyspace + "." + update.metadata().name))
                        throw new IllegalStateException("a decoding failure injected by --fail-decode");
                }
            }
            count = Changes.write(mutation, changes);
        }
        catch (IOException | RuntimeException e)
        {
            return undecodable(descriptor, at, e);
        }
        changes.serialize(out);
        return count;
    }

    /** A mutation that cannot be decoded. Written with a schema this agent does not know yet:
     *  it exits to start again with it (from the checkpoint). With the schema unchanged (a
     *  bug, a type it does not know) reloading would not help: the mutation is skipped,
     *  logged as an ERROR and counted ({@code skipped_undecodable} in the stats), and the
     *  changes after it still flow. */
    private int undecodable(CommitLogDescriptor descriptor, long at, Exception e) throws IOException
    {
        if (schemaChanged())
        {
            log.error("cannot decode a mutation at {} in {} ({}): exiting to reload the schema",
                      at, descriptor.fileName(), e.toString());
            System.exit(EXIT_SCHEMA_CHANGED);
        }
        synchronized (this)
        {
            skippedUndecodable++;
        }
        log.error("cannot decode the mutation at {} in {} with the current schema ({}): skipped, its changes are lost",
                  at, descriptor.fileName(), e.toString(), e);
        return 0;
    }

    /** Cassandra's section reader reports a bad sync marker through its handler: below the
     *  durable offset that is corruption. Throwing stops the read (it is retried at the next
     *  poll, and counted in the stats' errors). */
    private static final class Handler implements CommitLogReadHandler
    {
        @Override
        public boolean shouldSkipSegmentOnError(CommitLogReadException exception) throws IOException
        {
            throw exception;
        }

        @Override
        public void handleUnrecoverableError(CommitLogReadException exception) throws IOException
        {
            throw exception;
        }

        @Override
        public void handleMutation(Mutation m, int size, int entryLocation, CommitLogDescriptor desc)
        {
        }
    }

    // -- checkpoint and clean-up ------------------------------------------------------------------
    private Path checkpointFile()
    {
        return stateDir.resolve("checkpoint.json");
    }

    private Cursor loadCheckpoint() throws IOException
    {
        Path file = checkpointFile();
        if (!Files.exists(file))
            return new Cursor(0, -1, 0, true);
        JsonNode saved = MAPPER.readTree(Files.readAllBytes(file));
        return new Cursor(saved.path("segment").asLong(), saved.path("marker").asLong(-1),
                          saved.path("position").asLong(), saved.path("done").asBoolean());
    }

    /** Writes the acknowledged checkpoint to the file, unless the file holds it already or
     *  was written less than {@code minMillis} ago; returns what the file holds. Callable
     *  from any thread (the acknowledgement threads and the reading loop): one writes at a
     *  time, and the checkpoint only moves forward, so the file does too. */
    private Cursor saveCheckpoint(long minMillis) throws IOException
    {
        synchronized (saveLock)
        {
            Cursor at;
            synchronized (this)
            {
                at = checkpoint;
            }
            long now = System.currentTimeMillis();
            if (at.same(saved) || now - savedAt < minMillis)
                return saved;
            writeCheckpoint(at);
            saved = at;
            savedAt = now;
            saves++;
            return saved;
        }
    }

    /** {@link #saveCheckpoint} where a failure must not end the caller (the reading loop, a
     *  consumer's disconnect): it is logged and counted, and the write is tried again later
     *  (the file only trails further meanwhile). Not due yet: returns without the lock, so
     *  the reading loop does not wait for an acknowledgement thread's fsync. */
    private Cursor followCheckpoint(long minMillis)
    {
        if (System.currentTimeMillis() - savedAt < minMillis)
            return saved;
        try
        {
            return saveCheckpoint(minMillis);
        }
        catch (IOException e)
        {
            synchronized (this)
            {
                errors++;
            }
            log.warn("writing the checkpoint failed (tried again later): {}", e.toString());
            return saved;
        }
    }

    /** Written to a temporary file, synced, renamed over the old one, the directory synced. */
    private void writeCheckpoint(Cursor cursor) throws IOException
    {
        byte[] data = MAPPER.writeValueAsBytes(MAPPER.createObjectNode()
                                                     .put("segment", cursor.segment)
                                                     .put("marker", cursor.marker)
                                                     .put("position", cursor.position)
                                                     .put("done", cursor.done));
        Path tmp = stateDir.resolve("checkpoint.json.tmp");
        try (FileChannel channel = FileChannel.open(tmp, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                                                    StandardOpenOption.TRUNCATE_EXISTING))
        {
            channel.write(ByteBuffer.wrap(data));
            channel.force(true);
        }
        Files.move(tmp, checkpointFile(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        try (FileChannel dir = FileChannel.open(stateDir, StandardOpenOption.READ))
        {
            dir.force(true);
        }
    }

    /** Deletes the segments the checkpoint has passed: COMPLETED and read to the end, or
     *  without an idx and left behind by Cassandra (one link left, for ORPHAN_GRACE_MS).
     *
     *  A segment without CDC data is Cassandra's to delete: it removes the commit-log file,
     *  then the cdc_raw link, and its commit-log thread fails (commit_failure_policy: the
     *  node stops) if that link vanished in between. So such a link is deleted here only
     *  when it stayed, alone, long after Cassandra would have removed it (after a clean
     *  stop it can stay for good and count toward cdc_total_space). */
    private void deleteConsumed(Cursor at) throws IOException
    {
        synchronized (orphans)  // the consumer's thread (acknowledgements) and the main loop
        {
            deleteConsumedLocked(at);
        }
    }

    private void deleteConsumedLocked(Cursor at) throws IOException
    {
        long now = System.currentTimeMillis();
        Set<Path> seen = new HashSet<>();
        for (Segment segment : listSegments().values())
        {
            boolean passed = segment.id < at.segment || (segment.id == at.segment && at.done);
            if (segment.durable >= 0 && segment.completed && passed)
            {
                Files.deleteIfExists(segment.log);
                Files.deleteIfExists(segment.idx);
                relist = true;
            }
            else if (segment.durable < 0 && passed && links(segment.log) == 1 && !Files.exists(segment.idx))
            {
                seen.add(segment.log);
                long since = orphans.computeIfAbsent(segment.log, p -> now);
                if (now - since >= ORPHAN_GRACE_MS)
                {
                    log.info("deleting {}: no CDC data, left behind by Cassandra", segment.log.getFileName());
                    Files.deleteIfExists(segment.log);
                    relist = true;
                }
            }
        }
        orphans.keySet().retainAll(seen);
    }

    private static int links(Path file)
    {
        try
        {
            return ((Number) Files.getAttribute(file, "unix:nlink")).intValue();
        }
        catch (IOException | UnsupportedOperationException e)
        {
            return -1;
        }
    }

    // -- stats --------------------------------------------------------------------------------------
    private void stats() throws IOException
    {
        long bytes = 0;
        int count = 0;
        try (DirectoryStream<Path> files = Files.newDirectoryStream(cdcRaw))
        {
            for (Path file : files)
            {
                try
                {
                    bytes += Files.size(file);
                    if (file.getFileName().toString().endsWith(".log"))
                        count++;
                }
                catch (NoSuchFileException ignored)
                {
                }
            }
        }
        Consumer c;
        boolean alert;
        synchronized (this)
        {
            cdcRawBytes = bytes;
            segments = count;
            alert = totalSpace > 0 && bytes > alertFraction * totalSpace;
            if (alert && !alerting)
                log.warn("cdc_raw holds {} MiB, over {}% of cdc_total_space ({} MiB): when it is full, "
                         + "Cassandra rejects writes to CDC tables. Is the consumer connected and keeping up?",
                         bytes >> 20, Math.round(alertFraction * 100), totalSpace >> 20);
            else if (!alert && alerting)
                log.info("cdc_raw is back under the alert threshold ({} MiB)", bytes >> 20);
            alerting = alert;
            c = consumer;
        }
        if (c == null || c.closed)
            return;
        long skipped, undecodable, failures;
        long[] reading;
        Cursor at;
        synchronized (this)
        {
            skipped = skippedUnknown;
            undecodable = skippedUndecodable;
            failures = errors;
            at = checkpoint;
            reading = new long[] {listings, segmentOpens, reads};
        }
        long written = saves;
        byte[] message = line(g -> {
            g.writeStringField("type", "stats");
            g.writeNumberField("cdc_raw_bytes", cdcRawBytes);
            g.writeNumberField("cdc_total_space", totalSpace);
            g.writeNumberField("segments", segments);
            g.writeBooleanField("alert", alert);
            g.writeNumberField("skipped_unknown_table", skipped);
            g.writeNumberField("skipped_undecodable", undecodable);
            g.writeNumberField("errors", failures);
            g.writeNumberField("listings", reading[0]);
            g.writeNumberField("segment_opens", reading[1]);
            g.writeNumberField("reads", reading[2]);
            g.writeNumberField("checkpoint_writes", written);
            g.writeObjectFieldStart("checkpoint");
            g.writeNumberField("segment", at.segment);
            g.writeNumberField("position", at.position);
            g.writeEndObject();
        });
        try
        {
            c.send(message);
        }
        catch (IOException e)
        {
            c.close();
        }
    }

    // -- schema ---------------------------------------------------------------------------------
    /** Whether system_schema's sstables differ from those listed before the schema was loaded
     *  (Cassandra flushes them before a schema change returns). */
    private boolean schemaChanged() throws IOException
    {
        return !listSchemaFiles(schemaDirs).equals(schemaFiles);
    }

    /** The sstables of every system_schema table: what changes when the schema does. */
    private static Set<String> listSchemaFiles(List<Path> schemaDirs) throws IOException
    {
        Set<String> names = new TreeSet<>();
        for (Path dir : schemaDirs)
        {
            if (!Files.isDirectory(dir))
                continue;
            try (DirectoryStream<Path> tables = Files.newDirectoryStream(dir))
            {
                for (Path table : tables)
                {
                    if (!Files.isDirectory(table))
                        continue;
                    try (DirectoryStream<Path> files = Files.newDirectoryStream(table, "*-Data.db"))
                    {
                        for (Path file : files)
                            names.add(table.getFileName() + "/" + file.getFileName());
                    }
                    catch (NoSuchFileException ignored)
                    {
                    }
                }
            }
        }
        return names;
    }

    // -- JSON lines -------------------------------------------------------------------------------
    interface Fields
    {
        void write(JsonGenerator g) throws IOException;
    }

    static byte[] line(Fields fields) throws IOException
    {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (JsonGenerator g = MAPPER.getFactory().createGenerator(out))
        {
            g.writeStartObject();
            fields.write(g);
            g.writeEndObject();
        }
        out.write('\n');
        return out.toByteArray();
    }
}
