package trio_rt.cdc.agent;

import java.io.IOException;

import org.apache.cassandra.db.commitlog.CommitLogDescriptor;
import org.apache.cassandra.db.commitlog.CommitLogReadHandler;
import org.apache.cassandra.db.commitlog.CommitLogSegmentReader;
import org.apache.cassandra.io.util.RandomAccessReader;

/**
 * Cassandra's own sync-section iterator ({@link CommitLogSegmentReader}) started at a given
 * sync marker instead of the first one.
 *
 * <p>The stock {@code CommitLogReader} always walks a segment's sync markers from the header;
 * with a 2 ms commit-log sync a busy segment holds hundreds of thousands of them. The segment
 * reader itself starts at whatever position its {@code RandomAccessReader} is at, but its
 * constructor is protected: this subclass is the public way in. Only valid for uncompressed,
 * unencrypted segments, whose logical positions are file offsets (the compressed segmenter
 * counts logical positions from where it starts).
 */
final class Sections extends CommitLogSegmentReader
{
    private Sections(CommitLogReadHandler handler, CommitLogDescriptor descriptor, RandomAccessReader reader)
    {
        super(handler, descriptor, reader, true);
    }

    /** The sections of {@code reader}'s segment from the sync marker at {@code marker}. */
    static Sections from(CommitLogReadHandler handler, CommitLogDescriptor descriptor,
                         RandomAccessReader reader, long marker) throws IOException
    {
        reader.seek(marker);
        // A reader kept open between reads may hold the chunk at the marker from before the
        // node wrote it (the seek stays in the buffer): read it from the file again.
        reader.reBuffer();
        return new Sections(handler, descriptor, reader);
    }
}
