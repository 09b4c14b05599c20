#!/usr/bin/perl
# Verify the DKIM signatures of one message with Mail::DKIM::Verifier and print, tab-separated,
# one line per signature and one overall line:
#
#   signature <TAB> algorithm <TAB> domain <TAB> selector <TAB> result <TAB> detail
#   overall <TAB> result <TAB> detail
#
# Usage: dkim_verify.pl HOST:PORT MESSAGE_FILE
#
# The public keys come from the DNS server at HOST:PORT (UDP), asked through Mail::DKIM's own
# resolver hook with a plain Net::DNS::Resolver, so Mail::DKIM's DNS handling (rcodes, joining a
# TXT record's 255-octet strings) runs as it does in production.
use strict;
use warnings;

use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS;

@ARGV == 2 or die "usage: $0 HOST:PORT MESSAGE_FILE\n";
my ( $server, $message_file ) = @ARGV;
my ( $host, $port ) = $server =~ /^(.+):(\d+)$/ or die "$server: want HOST:PORT\n";

Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(
        nameservers => [$host],
        port        => $port,
        udp_timeout => 5,
        retry       => 1,
    )
);

open my $handle, '<:raw', $message_file or die "$message_file: $!\n";
my $message = do { local $/; <$handle> };
close $handle;
$message =~ s/\015?\012/\015\012/g;    # Mail::DKIM wants the SMTP (CRLF) form

my $verifier = Mail::DKIM::Verifier->new();
$verifier->PRINT($message);
$verifier->CLOSE();

for my $signature ( $verifier->signatures ) {
    print join( "\t", 'signature', $signature->algorithm // '', $signature->domain // '',
        $signature->selector // '', $signature->result // '', $signature->result_detail // '' ),
      "\n";
}
print join( "\t", 'overall', $verifier->result // '', $verifier->result_detail // '' ), "\n";
